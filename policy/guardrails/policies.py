"""The checks as Pulumi policies: one ResourceValidationPolicy per guarantee."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from . import checks
from .exemptions import exemption_reason
from .pods import NAMESPACE_TYPE, display_name, pod_spec

PodCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], Iterable[str]]


def _report(
    policy: str, args: ResourceValidationArgs, report_violation: ReportViolation, problems: Iterable[str]
) -> None:
    if exemption_reason(args.props, policy):
        return
    subject = display_name(args.resource_type, args.props, args.name)
    for problem in problems:
        report_violation(f"{subject}: {problem}", None)


def pod_policy(
    name: str, description: str, check: PodCheck, config_schema: PolicyConfigSchema | None = None
) -> ResourceValidationPolicy:
    """A policy that runs `check(pod_spec, policy_config)` on every resource that runs pods."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        spec = pod_spec(args.resource_type, args.props)
        if spec is not None:
            _report(name, args, report_violation, check(spec, args.get_config()))

    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    config_schema=config_schema)


def namespace_policy(name: str, description: str) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type == NAMESPACE_TYPE:
            _report(name, args, report_violation, checks.restricted_namespace(args.props))

    return ResourceValidationPolicy(name=name, description=description, validate=validate)


NON_ROOT = pod_policy(
    "pods-run-as-non-root",
    f"Every container runs with runAsNonRoot and a uid of at least {checks.MIN_UID}.",
    lambda spec, _config: checks.non_root(spec),
)
RESOURCE_LIMITS = pod_policy(
    "containers-have-resource-limits",
    "Every container (init containers too) sets resource limits.",
    lambda spec, config: checks.resource_limits(
        spec, config.get("requiredLimits", checks.DEFAULT_REQUIRED_LIMITS)
    ),
    PolicyConfigSchema(properties={"requiredLimits": {
        "type": "array",
        "items": {"type": "string"},
        "default": list(checks.DEFAULT_REQUIRED_LIMITS),
    }}),
)
PINNED_IMAGES = pod_policy(
    "images-are-pinned",
    "Every container image is pinned by a version tag or a digest: never `latest` or untagged.",
    lambda spec, _config: checks.pinned_images(spec),
)
READ_ONLY_ROOT = pod_policy(
    "root-filesystem-is-read-only",
    "Every container runs with a read-only root filesystem.",
    lambda spec, _config: checks.read_only_root(spec),
)
NO_PRIVILEGE_ESCALATION = pod_policy(
    "no-privilege-escalation",
    "No container is privileged, can escalate privileges, or keeps Linux capabilities.",
    lambda spec, _config: checks.no_privilege_escalation(spec),
)
RESTRICTED_NAMESPACE = namespace_policy(
    "namespaces-enforce-restricted",
    "Every namespace enforces the restricted Pod Security Standard through its PSA label.",
)

POLICIES: list[ResourceValidationPolicy] = [
    NON_ROOT,
    RESOURCE_LIMITS,
    PINNED_IMAGES,
    READ_ONLY_ROOT,
    NO_PRIVILEGE_ESCALATION,
    RESTRICTED_NAMESPACE,
]
