"""Run the real Pulumi program under the recording mock runtime and query what it declared."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime.settings import get_root_resource
from pulumi.runtime.sync_await import _sync_await

from infra.clouds.base import CloudTarget, LogSink, ModelSync
from infra.config import PROJECT, load_stack_config
from infra.program import build_serving_stack, run
from infra.render import RecordingMocks, config_value, run_program

REPO = Path(__file__).resolve().parents[2]
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in REPO.glob("Pulumi.*.yaml"))
API_KEY = "test-api-key-0123456789"
GRAFANA_PASSWORD = "test-grafana-password-0123"

# A small valid stack: local cloud, CPU, model on a pre-filled volume. Tests change what they exercise.
BASE_CONFIG: dict[str, Any] = {
    "cloud": "local",
    "namespace": "llm-test",
    "image": "registry.example.com/llm-serving/inference:1.2.3",
    "model": {
        "source": "volume", "accessMode": "ReadWriteMany", "storageSize": "50Gi", "loadTimeoutSeconds": 900
    },
    "gpu": {"count": 0},
    "resources": {
        "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}, "shmSize": "1Gi"
    },
    "replicas": 2,
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4},
    "ingress": {
        "enabled": True, "kind": "ingress", "host": "llm.test.example",
        "tls": {"clusterIssuer": "test-issuer"},
    },
    "server": {"drainTimeoutSeconds": 45},
    # Observability has tests of its own; here the core objects stand alone.
    "monitoring": {"enabled": False},
    "logging": {"enabled": False},
}


@dataclass
class Declared:
    """What one run of the program declared."""

    mocks: RecordingMocks
    outputs: dict[str, Any]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return self.mocks.kubernetes_objects()

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def raw_inputs(self, kind: str) -> list[dict[str, Any]]:
        """Inputs as the engine received them, secrets still wrapped."""
        return [r.inputs for r in self.mocks.resources if r.type.endswith(f":{kind}")]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def server(self) -> dict[str, Any]:
        return next(c for c in self.pod_spec["containers"] if c["name"] == "server")


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, section by section; a None value removes the key."""
    result = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def runtime_config(config: Mapping[str, Any], secrets: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    values = {f"{PROJECT}:{key}": config_value(value) for key, value in config.items()}
    values.update({f"{PROJECT}:{key}": value for key, value in secrets.items()})
    return values, [f"{PROJECT}:{key}" for key in secrets]


def declare(
    changes: Mapping[str, Any] | None = None,
    *,
    secrets: Mapping[str, str] | None = None,
    target: CloudTarget | None = None,
    stack: str = "test",
    sync_from_bucket: bool = False,
) -> Declared:
    """Run the program on BASE_CONFIG + `changes`; with `target`, on that target instead of the config's.

    `sync_from_bucket` sets model.source to bucket (and a per-pod access mode) after validation: the local
    cloud of BASE_CONFIG has no bucket, but `target` may.
    """
    config = merged(BASE_CONFIG, changes or {})
    values, secret_keys = runtime_config(config, {"apiKey": API_KEY} if secrets is None else secrets)

    def on_target() -> None:
        assert target is not None
        config = load_stack_config()
        if sync_from_bucket:
            config = config.model_copy(update={"model": config.model.model_copy(
                update={"source": "bucket", "access_mode": "ReadWriteOnce"}
            )})
        build_serving_stack(config, target)

    mocks = run_program(run if target is None else on_target, stack, values, secret_keys)
    exports = getattr(get_root_resource(), "outputs", {})
    return Declared(
        mocks, {key: _sync_await(pulumi.Output.from_input(value).future()) for key, value in exports.items()}
    )


def gpu_target(**changes: Any) -> CloudTarget:
    """A cloud target like a managed cluster's: GPU nodes tainted, a bucket to sync from."""
    fields: dict[str, Any] = dict(
        kubernetes_provider=None,
        storage_class="fast-ssd",
        service_type="LoadBalancer",
        service_annotations={"example.com/load-balancer": "internal"},
        node_selector={"example.com/gpu-pool": "true"},
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
        ],
        model_sync=ModelSync(
            image="registry.example.com/sync:2.0.0",
            bucket="models",
            copy_command=lambda prefix, directory: ["sync", f"bucket://models/{prefix}", directory],
            env={"REGION": "test-1"},
            service_account_annotations={"example.com/role": "model-reader"},
            service_account_labels={"example.com/pod-identity": "enabled"},
            egress_cidrs=["203.0.113.0/24"],
        ),
        log_sink=LogSink(kind="elasticsearch", outputs={}),
    )
    fields.update(changes)
    return CloudTarget(**fields)


def render_cli(
    stack: str, out: Path, env: Mapping[str, str], *options: str, timeout: int
) -> subprocess.CompletedProcess[str]:
    """`python -m infra render` of `stack` into `out` in a child process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "infra", "render", "--stack", stack, "--out", str(out), *options],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def rendered_stacks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stack file rendered by `python -m infra render` once per session, one directory per stack."""
    root = tmp_path_factory.mktemp("rendered")
    env = {
        **os.environ,
        "LLM_SERVING_SECRET_API_KEY": API_KEY,
        "LLM_SERVING_SECRET_GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD,
    }
    for stack in STACKS:
        result = render_cli(stack, root / stack, env, timeout=300)
        assert result.returncode == 0, f"render of {stack} failed:\n{result.stderr}"
    return root


@pytest.fixture
def declared() -> Declared:
    """The base stack, declared once for a test."""
    return declare()
