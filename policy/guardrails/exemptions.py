"""Declared exceptions: a resource that must break a guardrail says so, and why, in an annotation.

    metadata:
      annotations:
        llm-serving/skip-policy.pods-run-as-non-root: reads node log files owned by root

The reason travels with the resource, so it shows in the diff and the preview and is reviewed like
any other change; an annotation without a reason exempts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .pods import mapping

ANNOTATION_PREFIX = "llm-serving/skip-policy."


def exemption_annotation(policy: str) -> str:
    return ANNOTATION_PREFIX + policy


def exemption_reason(props: Mapping[str, Any], policy: str) -> str | None:
    annotations = mapping(mapping(props.get("metadata")).get("annotations"))
    reason = annotations.get(exemption_annotation(policy))
    return reason.strip() if isinstance(reason, str) and reason.strip() else None
