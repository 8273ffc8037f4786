"""Running a policy of the pack on one Kubernetes object the way the Pulumi engine does, minus the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from pulumi_policy.proxy import unknown_checking_proxy

from tests.delivery.conftest import Manifest, pulumi_type


def violations(policy: ResourceValidationPolicy, manifest: Manifest,
               config: Mapping[str, Any] | None = None) -> list[str]:
    resource_type = pulumi_type(manifest)
    name = manifest["metadata"]["name"]
    args = ResourceValidationArgs(
        resource_type=resource_type,
        # The engine hands policies this read-only proxy over the resource's inputs.
        props=unknown_checking_proxy(manifest),
        urn=f"urn:pulumi:test::llm-serving::{resource_type}::{name}",
        name=name,
        opts=PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), []),
        provider=None,
        config=dict(config) if config is not None else None,
    )
    found: list[str] = []
    policy.validate(args, lambda message, _urn=None: found.append(message))
    return found
