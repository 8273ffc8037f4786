"""Run the real Pulumi program for a cloud stack file under the recording mock, with config overrides,
and look at what it declared."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import yaml

from infra.config import PROJECT, StackConfig, load_stack_config, stack_file
from infra.program import run
from infra.render import Recorded, RecordingMocks, run_program
from tests.infra.conftest import API_KEY, merged, runtime_config

PROJECT_DIR = Path(__file__).resolve().parents[2]
KUBECONFIG = json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [], "users": []})


def stack_values(stack: str) -> dict[str, Any]:
    """The `llm-serving:` keys of a stack file, as plain Python values."""
    document = yaml.safe_load((PROJECT_DIR / stack_file(stack)).read_text())
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
    values: Mapping[str, Any], secrets: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    return runtime_config(values, {"apiKey": API_KEY, **secrets})


def run_stack(
    stack: str, values: Mapping[str, Any], secrets: Mapping[str, str] | None = None
) -> RecordingMocks:
    config, secret_keys = _runtime_config(values, secrets or {})
    return run_program(run, stack, config, secret_keys)


def load_config(stack: str, values: Mapping[str, Any]) -> StackConfig:
    """Only the config validation, as the program does it first."""
    config, secret_keys = _runtime_config(values, {})
    pulumi.runtime.set_all_config(config, secret_keys)
    return load_stack_config(stack)


def resources(mocks: RecordingMocks, type_token: str) -> list[Recorded]:
    return [r for r in mocks.resources if r.type == type_token]


def resource(mocks: RecordingMocks, type_token: str, name: str) -> dict[str, Any]:
    (found,) = [r.inputs for r in resources(mocks, type_token) if r.name == name]
    return found


def kubernetes_object(mocks: RecordingMocks, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in mocks.kubernetes_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


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


def policy(document: str) -> dict[str, Any]:
    return json.loads(document)
