"""Names and labels shared by every component, so that objects find each other and renders are stable.

Conventions for a component (copy them):
- `class XArgs` (a frozen dataclass) holds everything the component needs, already decided;
  `class X(Component)` with type token `llm-serving:<module>:<Type>`.
- Children are created with `opts=child_opts(self)`; Kubernetes objects get `metadata=app.metadata(...)`:
  an explicit name (no auto-naming suffix), the namespace and the standard labels.
- The Pulumi logical name of a child is `<object name>-<kind>`, unique within the stack.
- End with `self.register_outputs({...})`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import PROJECT, StackConfig

SERVER_COMPONENT = "server"
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]")


def version_label(image: str) -> str:
    """The image tag (or the start of its digest) as a valid label value."""
    name, _, digest = image.partition("@")
    version = digest.replace(":", "-")[:19] if digest else name.rsplit(":", 1)[1]
    return _LABEL_VALUE.sub("-", version)[:63].strip("-._") or "unknown"


@dataclass(frozen=True)
class App:
    """One deployed app: its name, namespace and version, and the names of its objects."""

    name: str
    namespace: str
    version: str

    @classmethod
    def from_config(cls, config: StackConfig) -> App:
        return cls(config.name, config.namespace, version_label(config.image))

    # Object names. The cloud targets name identities after the service account, so keep them here.
    @property
    def service_account(self) -> str:
        return self.name

    @property
    def model_claim(self) -> str:
        return f"{self.name}-model"

    @property
    def settings_config_map(self) -> str:
        return f"{self.name}-settings"

    @property
    def api_key_secret(self) -> str:
        return f"{self.name}-api-key"

    def labels(self, component: str = SERVER_COMPONENT) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": self.name,
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/version": self.version,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PROJECT,
            "app.kubernetes.io/managed-by": "pulumi",
        }

    def selector(self, component: str = SERVER_COMPONENT) -> dict[str, str]:
        """The labels that pick the pods of `component`; stable across versions, unlike `labels`."""
        return {
            "app.kubernetes.io/name": self.name,
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
        }

    def metadata(
        self,
        name: str,
        component: str = SERVER_COMPONENT,
        *,
        namespaced: bool = True,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, pulumi.Input[str]] | None = None,
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=name,
            namespace=self.namespace if namespaced else None,
            labels={**self.labels(component), **(labels or {})},
            annotations=dict(annotations) if annotations else None,
        )


class Component(pulumi.ComponentResource):
    """A component whose children wait for what the component was told to wait for: Pulumi applies a
    component's `depends_on` to the component alone, so a Deployment would not wait for its namespace."""

    def __init__(self, type_token: str, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token, name, None, opts)
        depends_on = opts.depends_on if opts else None
        self.waits_for: list[pulumi.Resource] = (
            [depends_on] if isinstance(depends_on, pulumi.Resource) else list(depends_on or [])  # type: ignore[arg-type]
        )


def child_opts(
    parent: pulumi.Resource, depends_on: list[pulumi.Resource] | None = None, **kwargs: object
) -> pulumi.ResourceOptions:
    inherited = list(getattr(parent, "waits_for", []))
    return pulumi.ResourceOptions(  # type: ignore[arg-type]
        parent=parent, depends_on=[*inherited, *(depends_on or [])] or None, **kwargs
    )
