"""The policy pack: each policy fires on a stack that overrides a component default, and every
object the stacks themselves render passes every policy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from policy.guardrails import POLICIES
from policy.guardrails.checks import PSA_ENFORCE_LABEL
from policy.guardrails.exemptions import exemption_annotation
from tests.delivery.conftest import STACKS, Manifest, first_of_kind
from tests.delivery.policy_harness import violations

POLICY = {policy.name: policy for policy in POLICIES}


def pod(deployment: Manifest) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def server(deployment: Manifest) -> dict[str, Any]:
    return pod(deployment)["containers"][0]


def set_server_security(**fields: Any) -> Callable[[Manifest], None]:
    return lambda deployment: server(deployment)["securityContext"].update(fields)


def set_image(image: str) -> Callable[[Manifest], None]:
    return lambda deployment: server(deployment).update(image=image)


def uid_only_on_pod(deployment: Manifest) -> None:
    del server(deployment)["securityContext"]["runAsUser"]
    pod(deployment)["securityContext"]["runAsUser"] = 1000


def drop_memory_limit(deployment: Manifest) -> None:
    del server(deployment)["resources"]["limits"]["memory"]


def keep_capabilities(deployment: Manifest) -> None:
    server(deployment)["securityContext"]["capabilities"] = {"drop": []}


# (policy that must fire, how the user overrode the default, a word the message must contain)
OVERRIDES = {
    "root uid": ("pods-run-as-non-root", set_server_security(runAsUser=0), "runAsUser"),
    "low uid inherited from the pod": ("pods-run-as-non-root", uid_only_on_pod, "runAsUser"),
    "runAsNonRoot off": ("pods-run-as-non-root", set_server_security(runAsNonRoot=False), "runAsNonRoot"),
    "no memory limit": ("containers-have-resource-limits", drop_memory_limit, "memory"),
    "latest tag": ("images-are-pinned", set_image("ghcr.io/llm-serving/inference:latest"), "latest"),
    "no tag": ("images-are-pinned", set_image("ghcr.io/llm-serving/inference"), "no tag"),
    "registry port, no tag": ("images-are-pinned", set_image("registry.local:5000/inference"), "no tag"),
    "writable root": ("root-filesystem-is-read-only", set_server_security(readOnlyRootFilesystem=False),
                      "readOnlyRootFilesystem"),
    "escalation allowed": ("no-privilege-escalation", set_server_security(allowPrivilegeEscalation=True),
                           "allowPrivilegeEscalation"),
    "privileged": ("no-privilege-escalation", set_server_security(privileged=True), "privileged"),
    "capabilities kept": ("no-privilege-escalation", keep_capabilities, "capabilities"),
}


@pytest.mark.parametrize("override", OVERRIDES)
def test_overriding_a_default_violates_that_policy(dev_objects: list[Manifest], override: str) -> None:
    policy_name, apply_override, field = OVERRIDES[override]
    deployment = copy.deepcopy(first_of_kind(dev_objects, "Deployment"))
    apply_override(deployment)

    found = violations(POLICY[policy_name], deployment)

    assert found, f"{policy_name} did not fire on: {override}"
    assert all("container 'server'" in message and field in message for message in found), found


@pytest.mark.parametrize("override", OVERRIDES)
def test_an_override_trips_no_other_policy(dev_objects: list[Manifest], override: str) -> None:
    policy_name, apply_override, _ = OVERRIDES[override]
    deployment = copy.deepcopy(first_of_kind(dev_objects, "Deployment"))
    apply_override(deployment)

    fired = {policy.name for policy in POLICIES if violations(policy, deployment)}

    assert fired == {policy_name}


@pytest.mark.parametrize("label", ["baseline", "privileged", None])
def test_namespace_without_restricted_enforcement_is_a_violation(dev_objects: list[Manifest],
                                                                 label: str | None) -> None:
    namespace = copy.deepcopy(first_of_kind(dev_objects, "Namespace"))
    labels = namespace["metadata"]["labels"]
    if label is None:
        del labels[PSA_ENFORCE_LABEL]
    else:
        labels[PSA_ENFORCE_LABEL] = label

    found = violations(POLICY["namespaces-enforce-restricted"], namespace)

    assert len(found) == 1 and PSA_ENFORCE_LABEL in found[0]


def _wrap(kind: str, deployment: Manifest) -> Manifest:
    """The Deployment's pod template inside another kind of workload."""
    template = deployment["spec"]["template"]
    metadata = deployment["metadata"]
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": kind, "metadata": metadata, "spec": template["spec"]}
    if kind == "CronJob":
        job_spec = {"template": template}
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": metadata,
                "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": job_spec}}}
    api_version = "batch/v1" if kind == "Job" else "apps/v1"
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": {"template": template}}


@pytest.mark.parametrize("kind", ["Pod", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"])
def test_pod_policies_reach_every_kind_of_workload(dev_objects: list[Manifest], kind: str) -> None:
    deployment = copy.deepcopy(first_of_kind(dev_objects, "Deployment"))
    set_server_security(runAsUser=0)(deployment)

    assert violations(POLICY["pods-run-as-non-root"], _wrap(kind, deployment))


def test_required_limits_come_from_policy_config(dev_objects: list[Manifest]) -> None:
    deployment = first_of_kind(dev_objects, "Deployment")
    assert "nvidia.com/gpu" not in server(deployment)["resources"]["limits"]

    found = violations(POLICY["containers-have-resource-limits"], deployment,
                       config={"requiredLimits": ["nvidia.com/gpu"]})

    assert found and "nvidia.com/gpu" in found[0]


@pytest.mark.parametrize(("reason", "exempt"), [("reads root-owned files on the node", True), (" ", False)])
def test_only_an_exemption_with_a_reason_silences_a_policy(dev_objects: list[Manifest], reason: str,
                                                           exempt: bool) -> None:
    deployment = copy.deepcopy(first_of_kind(dev_objects, "Deployment"))
    set_server_security(runAsUser=0)(deployment)
    deployment["metadata"]["annotations"][exemption_annotation("pods-run-as-non-root")] = reason

    assert (violations(POLICY["pods-run-as-non-root"], deployment) == []) is exempt


@pytest.mark.parametrize("stack", STACKS)
def test_every_object_of_the_stack_passes_every_policy(rendered_stack: Callable[[str], list[Manifest]],
                                                       stack: str) -> None:
    objects = rendered_stack(stack)
    # The policies must have had something to inspect.
    assert {"Namespace", "Deployment"} <= {obj["kind"] for obj in objects}

    found = {
        f"{obj['kind']}/{obj['metadata']['name']}": problems
        for obj in objects
        for policy in POLICIES
        if (problems := violations(policy, obj))
    }

    assert found == {}
