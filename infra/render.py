"""Offline render: the real program under Pulumi's mock runtime, written out as Kubernetes YAML.

No Pulumi CLI, cloud account or cluster is needed. The recorder sees every resource registration
with its inputs in wire form (`apiVersion`, `kind`, camelCase fields), which for a Kubernetes object
is its manifest. Secrets cannot be decrypted without the CLI, so they come from environment variables
`LLM_SERVING_SECRET_<KEY>` (apiKey -> LLM_SERVING_SECRET_API_KEY).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import rpc, settings
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.clouds import mock_outputs as cloud_mocks
from infra.config import PROJECT, SECRET_KEYS, secret_env_name, stack_file

PLAN_FILE = Path("plan", "cloud-resources.json")
# kubectl reads only .yaml/.yml/.json files of a directory: the marker is invisible to it.
MARKER_FILE = ".llm-serving-render"
REDACTED = "[secret]"
KUBERNETES_PREFIX = "kubernetes:"

# Order of `kubectl apply -f DIR`: what others refer to first.
_KIND_RANK = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "StorageClass": 2,
    "PriorityClass": 2,
    "ResourceQuota": 10,
    "LimitRange": 10,
    "ServiceAccount": 20,
    "ClusterRole": 21,
    "Role": 21,
    "ClusterRoleBinding": 22,
    "RoleBinding": 22,
    "Secret": 30,
    "ConfigMap": 30,
    "PersistentVolumeClaim": 31,
    "Service": 40,
    "Deployment": 50,
    "StatefulSet": 50,
    "DaemonSet": 50,
    "PodDisruptionBudget": 60,
    "HorizontalPodAutoscaler": 60,
    "ClusterIssuer": 45,
    "EnvoyProxy": 45,
    "GatewayClass": 46,
    "Gateway": 65,
    "Ingress": 70,
    "HTTPRoute": 70,
    "BackendTrafficPolicy": 75,
    "NetworkPolicy": 80,
}
_OTHER_RANK = 90


HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


@dataclass(frozen=True)
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    depends_on: tuple[str, ...] = ()  # `type name` of each resource it waits for (explicit and by input)
    provider: str = ""  # `type name` of its provider, which waits for what the provider depends on


def _urn_key(urn: str) -> str:
    """`type name` from a URN (urn:pulumi:stack::project::parent$type::name)."""
    qualified_type, name = urn.split("::")[-2:]
    return f"{qualified_type.split('$')[-1]} {name}"


def _provider_key(reference: str) -> str:
    """`type name` of a provider reference (its URN, `::`, its id); empty for a default provider."""
    return _urn_key(reference.rsplit("::", 1)[0]) if reference else ""


class RecordingMonitor(MockMonitor):
    """The mock runtime's monitor, which also hands the recorder each registration's dependencies: the
    mocks alone see only inputs."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recorder = mocks

    def RegisterResource(self, request: Any) -> Any:
        if request.custom:
            keys = sorted({_urn_key(urn) for urn in request.dependencies})
            provider = _provider_key(request.provider)
            self.recorder.dependencies[(request.type, request.name)] = (tuple(keys), provider)
        return super().RegisterResource(request)


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every custom resource; answers with its inputs as outputs, plus the outputs that are not
    inputs (an endpoint, an ARN) and the results of provider functions from `infra.clouds.mock_outputs`."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []
        # Filled by RecordingMonitor just before each registration reaches `new_resource`.
        self.dependencies: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {}

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.custom:
            depends_on, provider = self.dependencies.get((args.typ, args.name), ((), ""))
            self.resources.append(Recorded(args.typ, args.name, args.inputs, depends_on, provider))
        outputs = {**args.inputs, **cloud_mocks.MOCK_OUTPUTS.get(args.typ, lambda _: {})(args)}
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        answer = cloud_mocks.MOCK_CALLS.get(args.token)
        # The mock runtime iterates the failures: an empty list, never None.
        return (answer(args) if answer else {}), []

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        # A Secret manifest must hold its values; the files are written readable by the owner only.
        return [_clean(r.inputs, reveal_secrets=True) for r in self.resources if _is_manifest(r)]

    def cloud_resources(self) -> list[Recorded]:
        """Everything that is not a Kubernetes object: cloud resources, providers, Helm releases."""
        return [r for r in self.resources if not _is_manifest(r)]


def _is_manifest(resource: Recorded) -> bool:
    return resource.type.startswith(KUBERNETES_PREFIX) and resource.type != HELM_RELEASE


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def _clean(value: Any, reveal_secrets: bool) -> Any:
    """Drop unset fields, write whole floats as ints (the wire has only floats), unwrap or redact secrets."""
    if _is_secret(value):
        return _clean(value["value"], reveal_secrets) if reveal_secrets else REDACTED
    if isinstance(value, dict):
        return {
            k: _clean(v, reveal_secrets) for k, v in value.items() if v is not None and not k.startswith("__")
        }
    if isinstance(value, list):
        return [_clean(v, reveal_secrets) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def config_value(value: Any) -> str:
    """Stack-file values as Pulumi hands them to a program: strings, structured ones as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


class StackFileError(Exception):
    pass


def read_stack_config(project_dir: Path, stack: str) -> tuple[dict[str, str], list[str]]:
    """The runtime config of `stack` (fully qualified keys) and which keys are secrets."""
    path = project_dir / stack_file(stack)
    if not path.is_file():
        raise StackFileError(f"{path.name}: no such stack file in {project_dir}")
    document = yaml.safe_load(path.read_text()) or {}
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (document.get("config") or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            continue  # encrypted for the CLI; offline it comes from the environment below
        config[full_key] = config_value(value)
    for key in SECRET_KEYS:
        full_key = f"{PROJECT}:{key}"
        value = os.environ.get(secret_env_name(key))
        if value is not None and full_key not in config:
            config[full_key] = value
            secret_keys.append(full_key)
    return config, secret_keys


def run_program(
    program: Callable[[], None],
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
    mocks: RecordingMocks | None = None,
) -> RecordingMocks:
    """Run `program` under `mocks` (default: a fresh recorder) with `config`; its exceptions propagate."""
    mocks = mocks or RecordingMocks()
    _ensure_event_loop()
    # A fresh root stack per run: exports and children of an earlier run in this process must not leak in.
    settings.set_root_resource(None)  # type: ignore[arg-type]
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(mocks)
    )
    _sync_await(run_pulumi_func(program))
    return mocks


def _ensure_event_loop() -> None:
    """Pulumi's runtime schedules on the thread's current loop; an earlier `asyncio.run` leaves none."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def manifest_file_names(objects: list[dict[str, Any]]) -> list[str]:
    """`<rank>-<kind>-<name>.yaml`; the namespace joins the name only where two objects would clash."""

    def base(obj: dict[str, Any], qualified: bool) -> str:
        kind = obj["kind"]
        meta = obj.get("metadata", {})
        name = f"{meta['namespace']}-{meta['name']}" if qualified and meta.get("namespace") else meta["name"]
        return f"{_KIND_RANK.get(kind, _OTHER_RANK):03d}-{kind.lower()}-{name}.yaml"

    plain = [base(o, qualified=False) for o in objects]
    return [base(o, qualified=True) if plain.count(p) > 1 else p for o, p in zip(objects, plain, strict=True)]


def _write(directory: Path, mocks: RecordingMocks) -> None:
    objects = mocks.kubernetes_objects()
    for obj, file_name in zip(objects, manifest_file_names(objects), strict=True):
        path = directory / file_name
        path.write_text(yaml.safe_dump(obj, sort_keys=True, default_flow_style=False))
        if obj["kind"] == "Secret":
            path.chmod(0o600)
    plan = sorted(
        (
            {
                "type": r.type,
                "name": r.name,
                "inputs": _clean(r.inputs, reveal_secrets=False),
                "dependsOn": list(r.depends_on),
                "provider": r.provider,
            }
            for r in mocks.cloud_resources()
        ),
        key=lambda entry: (entry["type"], entry["name"]),
    )
    (directory / PLAN_FILE).parent.mkdir()
    (directory / PLAN_FILE).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    (directory / MARKER_FILE).write_text(
        "Written by `python -m infra render`; the next render replaces it.\n"
    )


def _replace_directory(out: Path, rendered: Path) -> None:
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER_FILE).exists():
            raise StackFileError(f"{out} exists and was not written by a render; refusing to replace it")
        shutil.rmtree(out)
    rendered.rename(out)


def render(stack: str, out: Path, project_dir: Path, program: Callable[[], None]) -> RecordingMocks:
    """Render `stack` into `out`, replacing an earlier render there only once everything succeeded."""
    config, secret_keys = read_stack_config(project_dir, stack)
    mocks = run_program(program, stack, config, secret_keys)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write(staging, mocks)
        _replace_directory(out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return mocks
