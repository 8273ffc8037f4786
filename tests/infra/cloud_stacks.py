"""Run the real Pulumi program for a cloud stack file under the recording mock, with config overrides,
and look at what it declared."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pytest
import yaml

from infra.config import PROJECT, ConfigError, StackConfig, load_stack_config, stack_file
from infra.program import run
from infra.render import Recorded, RecordingMocks, run_program
from tests.infra.conftest import API_KEY, GRAFANA_PASSWORD, REPO, merged, runtime_config

KUBECONFIG = json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [], "users": []})


def stack_values(stack: str) -> dict[str, Any]:
    """The `llm-serving:` keys of a stack file, as plain Python values."""
    document = yaml.safe_load((REPO / stack_file(stack)).read_text())
    return {key.removeprefix(f"{PROJECT}:"): value for key, value in document["config"].items()}


def with_changes(values: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with dotted keys (`aws.cluster`) replaced or, where the value is None, removed."""
    nested: dict[str, Any] = {}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged(values, nested)


def _runtime_config(
    values: Mapping[str, Any], secrets: Mapping[str, str | None]
) -> tuple[dict[str, str], list[str]]:
    """`secrets` over the stack's usual ones; a None value leaves that secret unset."""
    given = {"apiKey": API_KEY, "grafanaAdminPassword": GRAFANA_PASSWORD, **secrets}
    return runtime_config(values, {key: value for key, value in given.items() if value is not None})


def run_stack(
    stack: str, values: Mapping[str, Any], secrets: Mapping[str, str | None] | None = None
) -> RecordingMocks:
    config, secret_keys = _runtime_config(values, secrets or {})
    return run_program(run, stack, config, secret_keys)


def load_config(stack: str, values: Mapping[str, Any]) -> StackConfig:
    """Only the config validation, as the program does it first."""
    config, secret_keys = _runtime_config(values, {})
    pulumi.runtime.set_all_config(config, secret_keys)
    return load_stack_config(stack)


def stack_fixtures(
    stack: str, existing_changes: Mapping[str, Any], existing_secrets: Mapping[str, str] | None = None
) -> tuple[Callable[..., Any], ...]:
    """The module fixtures of a cloud's tests, in this order: `values` (the stack file's keys),
    `config` (them validated), `created` (the program run on them, creating the cluster) and
    `existing` (run with `existing_changes`, on an existing cluster). Assign them to those names."""

    @pytest.fixture(scope="module", name="values")
    def values_fixture() -> dict[str, Any]:
        return stack_values(stack)

    @pytest.fixture(scope="module", name="config")
    def config_fixture(values: dict[str, Any]) -> StackConfig:
        return load_config(stack, values)

    @pytest.fixture(scope="module", name="created")
    def created_fixture(values: dict[str, Any]) -> RecordingMocks:
        return run_stack(stack, values)

    @pytest.fixture(scope="module", name="existing")
    def existing_fixture(values: dict[str, Any]) -> RecordingMocks:
        return run_stack(stack, with_changes(values, existing_changes), secrets=existing_secrets)

    return values_fixture, config_fixture, created_fixture, existing_fixture


def assert_retention_rejected(stack: str, values: Mapping[str, Any], days: int) -> None:
    """A retention the cloud's log service does not offer stops the program naming the key."""
    with pytest.raises(ConfigError, match=rf"{PROJECT}:logging\.retentionDays"):
        run_stack(stack, with_changes(values, {"logging.retentionDays": days}))


def resources(mocks: RecordingMocks, type_token: str) -> list[Recorded]:
    return [r for r in mocks.resources if r.type == type_token]


def only_resource(mocks: RecordingMocks, type_token: str) -> dict[str, Any]:
    """The inputs of the one resource of `type_token` the program declared (failing if more or none)."""
    (found,) = resources(mocks, type_token)
    return found.inputs


def resource(mocks: RecordingMocks, type_token: str, name: str) -> dict[str, Any]:
    (found,) = [r.inputs for r in resources(mocks, type_token) if r.name == name]
    return found


def kubernetes_object(mocks: RecordingMocks, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in mocks.kubernetes_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def only_kubernetes_object(mocks: RecordingMocks, kind: str) -> dict[str, Any]:
    """The one object of `kind` the program declared (failing if there are more or none)."""
    (found,) = [o for o in mocks.kubernetes_objects() if o["kind"] == kind]
    return found


def model_volume_storage_class(mocks: RecordingMocks) -> dict[str, Any]:
    """The StorageClass the program declared, after checking that each pod's model volume claims it."""
    pod = only_kubernetes_object(mocks, "Deployment")["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if "ephemeral" in v)["ephemeral"]["volumeClaimTemplate"]
    storage_class = only_kubernetes_object(mocks, "StorageClass")
    assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    return storage_class


def pod_spec(mocks: RecordingMocks, config: StackConfig) -> dict[str, Any]:
    return kubernetes_object(mocks, "Deployment", config.name)["spec"]["template"]["spec"]


def tolerates(tolerations: list[dict[str, Any]], key: str, value: str | None, effect: str) -> bool:
    """Whether a pod with `tolerations` may be scheduled on a node with this taint."""
    return any(
        t.get("key") == key
        and t.get("effect") in (effect, None)
        and (t.get("operator") == "Exists" or t.get("value") == value)
        for t in tolerations
    )


def assert_workload_fits_gpu_pool(
    mocks: RecordingMocks, config: StackConfig, taints: list[dict[str, Any]], labels: Mapping[str, str]
) -> None:
    """The GPU pool is tainted, the workload tolerates every taint (effects in Kubernetes spelling),
    and it selects the pool's labels."""
    spec = pod_spec(mocks, config)
    assert taints
    for taint in taints:
        assert tolerates(spec["tolerations"], taint["key"], taint.get("value"), taint["effect"])
    assert labels.items() <= spec["nodeSelector"].items()


def policy(document: str) -> dict[str, Any]:
    return json.loads(document)
