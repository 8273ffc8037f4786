"""The model sync: what it copies (base model and LoRA adapters), that it fails loudly on an empty or wrong
prefix (the script runs in a real shell here), and what the server is told about the adapters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.clouds.base import ModelSync
from infra.components.storage import SyncSource, sync_script
from infra.config import ConfigError
from tests.infra.cloud_stacks import (
    kubernetes_object,
    load_config,
    policy,
    resource,
    run_stack,
    stack_values,
    with_changes,
)

ADAPTERS = [
    {"name": "support", "bucketPrefix": "adapters/support"}, {"name": "sql", "bucketPrefix": "adapters/sql"}
]


def _local_sync(bucket: Path) -> ModelSync:
    """A sync from a directory: like `aws s3 sync`, it copies nothing from an empty prefix, and passes."""
    return ModelSync(
        image="registry.example.com/sync:1.0.0",
        bucket="models-bucket",
        copy_command=lambda prefix, directory: ["cp", "-R", f"{bucket}/{prefix}/.", directory],
    )


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)


def test_sync_fails_naming_bucket_and_prefix_when_the_prefix_is_empty(tmp_path: Path) -> None:
    (tmp_path / "bucket" / "models" / "empty").mkdir(parents=True)
    sources = [SyncSource("models/empty", str(tmp_path / "volume" / "model"), "config.json")]
    result = _run(sync_script(_local_sync(tmp_path / "bucket"), sources))
    assert result.returncode != 0
    assert "'models-bucket'" in result.stderr and "'models/empty'" in result.stderr


def test_sync_fails_when_the_prefix_holds_no_model(tmp_path: Path) -> None:
    wrong = tmp_path / "bucket" / "models" / "wrong"
    wrong.mkdir(parents=True)
    (wrong / "README.md").write_text("not a model\n")
    sources = [SyncSource("models/wrong", str(tmp_path / "volume" / "model"), "config.json")]
    result = _run(sync_script(_local_sync(tmp_path / "bucket"), sources))
    assert result.returncode != 0 and "'models/wrong'" in result.stderr


def test_sync_copies_the_model_and_each_adapter(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    for prefix, marker in (("models/current", "config.json"), ("adapters/a", "adapter_config.json")):
        (bucket / prefix).mkdir(parents=True)
        (bucket / prefix / marker).write_text("{}\n")
    sources = [
        SyncSource("models/current", str(tmp_path / "v" / "model"), "config.json"),
        SyncSource("adapters/a", str(tmp_path / "v" / "adapters" / "a"), "adapter_config.json"),
    ]
    result = _run(sync_script(_local_sync(bucket), sources))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "v" / "adapters" / "a" / "adapter_config.json").exists()


def test_a_missing_adapter_fails_the_sync_naming_its_prefix(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "models" / "current").mkdir(parents=True)
    (bucket / "models" / "current" / "config.json").write_text("{}\n")
    (bucket / "adapters" / "gone").mkdir(parents=True)
    sources = [
        SyncSource("models/current", str(tmp_path / "v" / "model"), "config.json"),
        SyncSource("adapters/gone", str(tmp_path / "v" / "adapters" / "gone"), "adapter_config.json"),
    ]
    result = _run(sync_script(_local_sync(bucket), sources))
    assert result.returncode != 0 and "'adapters/gone'" in result.stderr


@pytest.fixture(scope="module")
def with_adapters() -> Any:
    return run_stack("prod", with_changes(stack_values("prod"), {"model.loraAdapters": ADAPTERS}))


def test_adapters_are_synced_beside_the_model_and_given_to_the_server(with_adapters: Any) -> None:
    deployment = kubernetes_object(with_adapters, "Deployment", "llm-serving")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][2]
    assert "s3://llm-serving-prod-models/adapters/support /models/adapters/support" in script
    assert "s3://llm-serving-prod-models/adapters/sql /models/adapters/sql" in script
    data = kubernetes_object(with_adapters, "ConfigMap", "llm-serving-settings")["data"]
    assert json.loads(data["LLM_SERVING_LORA_MODULES"]) == [
        "support=/models/adapters/support", "sql=/models/adapters/sql"
    ]


def test_the_sync_identity_may_read_the_adapters_prefixes(with_adapters: Any) -> None:
    role_policy = resource(with_adapters, "aws:iam/rolePolicy:RolePolicy", "llm-serving-model-sync")
    inline = policy(role_policy["policy"])
    (get,) = [s for s in inline["Statement"] if s["Action"] == "s3:GetObject"]
    assert sorted(r.rsplit(":::", 1)[1] for r in get["Resource"]) == [
        "llm-serving-models/adapters/sql/*", "llm-serving-models/adapters/support/*",
        "llm-serving-models/models/current/*",
    ]


def test_adapters_need_the_bucket() -> None:
    values = with_changes(stack_values("prod"), {"model.loraAdapters": ADAPTERS, "model.source": "volume",
                                                 "model.accessMode": "ReadWriteMany"})
    with pytest.raises(ConfigError, match=r"llm-serving:model\.loraAdapters"):
        load_config("prod", values)


def test_adapters_with_tensor_parallelism_refused_as_the_server_would() -> None:
    values = with_changes(stack_values("prod"), {
        "model.loraAdapters": ADAPTERS, "gpu.count": 4, "aws.cluster.nodePool.instanceType": "g5.12xlarge",
        "quota.gpus": 64,
    })
    with pytest.raises(ConfigError, match=r"llm-serving:model\.loraAdapters: the server refuses"):
        load_config("prod", values)


def test_more_adapters_than_the_server_loads_at_once_refused() -> None:
    values = with_changes(stack_values("prod"), {"model.loraAdapters": ADAPTERS, "server.maxLoras": 1})
    with pytest.raises(ConfigError, match=r"llm-serving:model\.loraAdapters: the server refuses.*max_loras"):
        load_config("prod", values)
