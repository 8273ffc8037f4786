"""The checks themselves: pure functions from a pod spec (or namespace) to the problems found.

Each message names the container and the field to change, and what the components set there by
default, so that whoever overrode a default sees what it was and why it is required.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .pods import containers, mapping

# Above 10000 so that the uid never matches a user on the node; the image runs as 10001.
MIN_UID = 10001
DEFAULT_REQUIRED_LIMITS: Sequence[str] = ("cpu", "memory")
PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PSA_LEVEL = "restricted"


def _uid(value: Any) -> int | None:
    # Properties reach a policy pack through protobuf Structs, where every number is a float.
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        return None
    return int(value)


def non_root(spec: Mapping[str, Any]) -> Iterator[str]:
    for container in containers(spec):
        if container.security("runAsNonRoot") is not True:
            yield (f"{container.label}: securityContext.runAsNonRoot is not true; the components set it "
                   "on every pod and container")
        raw_uid = container.security("runAsUser")
        uid = _uid(raw_uid)
        if uid is None or uid < MIN_UID:
            shown = "unset" if raw_uid is None else raw_uid
            yield (f"{container.label}: securityContext.runAsUser is {shown}; set a uid of at least "
                   f"{MIN_UID} (the components default to {MIN_UID})")


def resource_limits(
    spec: Mapping[str, Any], required: Sequence[str] = DEFAULT_REQUIRED_LIMITS
) -> Iterator[str]:
    for container in containers(spec):
        limits = mapping(mapping(container.spec.get("resources")).get("limits"))
        missing = [name for name in required if name not in limits]
        if missing:
            yield (f"{container.label}: resources.limits has no {', '.join(missing)}; every container "
                   "needs limits so that one pod cannot starve the node")


def image_reference_problem(image: str) -> str | None:
    """Why an image reference is not pinned, or None when it is (a digest, or a tag other than latest)."""
    if "@sha256:" in image:
        return None
    last_segment = image.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        return "has no tag, so it means `latest`"
    if last_segment.rsplit(":", 1)[1] == "latest":
        return "uses the moving tag `latest`"
    return None


def pinned_images(spec: Mapping[str, Any]) -> Iterator[str]:
    for container in containers(spec):
        image = container.spec.get("image")
        if not isinstance(image, str) or not image:
            yield f"{container.label}: has no image"
            continue
        problem = image_reference_problem(image)
        if problem is not None:
            yield (f"{container.label}: image {image!r} {problem}; pin a version tag or a digest "
                   "(repo@sha256:...)")


def read_only_root(spec: Mapping[str, Any]) -> Iterator[str]:
    for container in containers(spec):
        if container.security("readOnlyRootFilesystem") is not True:
            yield (f"{container.label}: securityContext.readOnlyRootFilesystem is not true; write to "
                   "mounted volumes (the components mount /tmp and /cache) instead")


def no_privilege_escalation(spec: Mapping[str, Any]) -> Iterator[str]:
    for container in containers(spec):
        if container.security("privileged") is True:
            yield f"{container.label}: securityContext.privileged is true"
        if container.security("allowPrivilegeEscalation") is not False:
            yield f"{container.label}: securityContext.allowPrivilegeEscalation is not false"
        capabilities = mapping(mapping(container.spec.get("securityContext")).get("capabilities"))
        if "ALL" not in (capabilities.get("drop") or ()):
            yield f"{container.label}: securityContext.capabilities.drop does not include ALL"


def restricted_namespace(props: Mapping[str, Any]) -> Iterator[str]:
    labels = mapping(mapping(props.get("metadata")).get("labels"))
    level = labels.get(PSA_ENFORCE_LABEL)
    if level != PSA_LEVEL:
        shown = "missing" if level is None else repr(level)
        yield (f"label {PSA_ENFORCE_LABEL} is {shown}; it must be {PSA_LEVEL!r} so that the API server "
               "rejects pods that break the restricted Pod Security Standard")
