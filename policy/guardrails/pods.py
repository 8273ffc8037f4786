"""Where a Kubernetes resource keeps its pod spec and containers, in Pulumi's (wire-format) inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_TEMPLATE = ("spec", "template", "spec")

# Pulumi type token -> path from the resource's inputs to its pod spec.
POD_SPEC_PATHS: Mapping[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": _TEMPLATE,
    "kubernetes:apps/v1:StatefulSet": _TEMPLATE,
    "kubernetes:apps/v1:DaemonSet": _TEMPLATE,
    "kubernetes:apps/v1:ReplicaSet": _TEMPLATE,
    "kubernetes:batch/v1:Job": _TEMPLATE,
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}

NAMESPACE_TYPE = "kubernetes:core/v1:Namespace"


@dataclass(frozen=True)
class Container:
    """One container of a pod spec, with the pod-level security context it inherits from."""

    role: str  # "container" or "init container"
    name: str
    spec: Mapping[str, Any]
    pod_security_context: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.role} {self.name!r}"

    def security(self, field: str) -> Any:
        """A security setting as Kubernetes resolves it: the container's own, else the pod's."""
        own = mapping(self.spec.get("securityContext")).get(field)
        return own if own is not None else self.pod_security_context.get(field)


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec of a workload resource; None for resources that run no pods."""
    path = POD_SPEC_PATHS.get(resource_type)
    if path is None:
        return None
    node: Mapping[str, Any] = props
    for key in path:
        node = mapping(node.get(key))
    return node


def containers(spec: Mapping[str, Any]) -> Iterator[Container]:
    pod_context = mapping(spec.get("securityContext"))
    for field, role in (("initContainers", "init container"), ("containers", "container")):
        for container in spec.get(field) or ():
            container = mapping(container)
            yield Container(role, str(container.get("name", "?")), container, pod_context)


def display_name(resource_type: str, props: Mapping[str, Any], fallback: str) -> str:
    """`Deployment llm-serving/llm-serving`: the kind and the object's own name, as kubectl shows it."""
    kind = resource_type.rsplit(":", 1)[-1]
    metadata = mapping(props.get("metadata"))
    name = metadata.get("name") or fallback
    namespace = metadata.get("namespace")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
