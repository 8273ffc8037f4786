"""Guardrails for llm-serving stacks: what the components set by default, enforced at preview time.

A stack that overrides one of those defaults (a root uid, a container without limits, a `latest`
image, a namespace without Pod Security Admission `restricted`) gets a named policy violation
instead of a cluster that quietly accepts it.
"""

from .policies import POLICIES

__all__ = ["POLICIES"]
