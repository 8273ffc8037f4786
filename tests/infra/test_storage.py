"""Model storage: the claim on the target's storage class and the bucket sync before the server starts."""

from __future__ import annotations

from dataclasses import replace

from infra.clouds.base import ModelSync
from infra.config import MODEL_DIR, MODEL_MOUNT_PATH
from tests.infra.conftest import BASE_CONFIG, declare, gpu_target


def test_claim_size_and_access_mode_from_config() -> None:
    spec = declare({"model": {"storageSize": "75Gi", "accessMode": "ReadOnlyMany"}}).one(
        "PersistentVolumeClaim"
    )["spec"]
    assert spec["resources"]["requests"]["storage"] == "75Gi"
    assert spec["accessModes"] == ["ReadOnlyMany"]


def test_claim_uses_the_targets_storage_class() -> None:
    target = gpu_target(storage_class="cloud-ssd")
    claim = declare(target=target).one("PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "cloud-ssd"


def test_claim_without_storage_class_uses_cluster_default() -> None:
    assert "storageClassName" not in declare().one("PersistentVolumeClaim")["spec"]


def test_server_mounts_the_model_read_only() -> None:
    declared = declare()
    claim = declared.one("PersistentVolumeClaim")["metadata"]["name"]
    volume = next(v for v in declared.pod_spec["volumes"] if v.get("persistentVolumeClaim"))
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    mount = next(m for m in declared.server["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": MODEL_MOUNT_PATH, "readOnly": True}


def test_server_told_where_the_model_is() -> None:
    assert declare().one("ConfigMap")["data"]["LLM_SERVING_MODEL_PATH"] == MODEL_DIR


def test_demo_model_needs_no_claim() -> None:
    declared = declare({"model": {"source": "demo"}})
    assert declared.all("PersistentVolumeClaim") == []
    assert "LLM_SERVING_MODEL_PATH" not in declared.one("ConfigMap")["data"]


def test_bucket_sync_runs_as_init_container() -> None:
    target = gpu_target()
    init = declare(target=target, sync_from_bucket=True).pod_spec["initContainers"]
    assert [c["image"] for c in init] == [target.model_sync.image]
    shell, flag, script = init[0]["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert "sync bucket://models/models/current /models/model" in script


def test_bucket_sync_gives_each_pod_a_volume_of_its_own() -> None:
    declared = declare(target=gpu_target(), sync_from_bucket=True)
    assert declared.all("PersistentVolumeClaim") == []
    volume = next(v for v in declared.pod_spec["volumes"] if v.get("ephemeral"))
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == BASE_CONFIG["model"]["storageSize"]


def test_bucket_sync_writes_into_the_model_volume() -> None:
    declared = declare(target=gpu_target(), sync_from_bucket=True)
    claim_volume = next(v["name"] for v in declared.pod_spec["volumes"] if v.get("ephemeral"))
    mounts = declared.pod_spec["initContainers"][0]["volumeMounts"]
    assert {"name": claim_volume, "mountPath": MODEL_MOUNT_PATH} in mounts


def test_bucket_sync_gets_the_targets_environment() -> None:
    target = gpu_target()
    env = {
        e["name"]: e["value"]
        for e in declare(target=target, sync_from_bucket=True).pod_spec["initContainers"][0]["env"]
    }
    assert env.items() >= dict(target.model_sync.env).items()


def test_volume_source_has_no_sync() -> None:
    assert "initContainers" not in declare(target=gpu_target()).pod_spec


def test_sync_identity_on_the_service_account() -> None:
    target = gpu_target()
    account = declare(target=target, sync_from_bucket=True).one("ServiceAccount")["metadata"]
    assert account["annotations"] == dict(target.model_sync.service_account_annotations)
    assert account["labels"].items() >= dict(target.model_sync.service_account_labels).items()


def test_sync_credentials_live_in_a_secret_mounted_read_only() -> None:
    sync = gpu_target().model_sync
    assert sync is not None
    target = gpu_target(model_sync=replace(sync, secret_files={"credentials": "key = value"}))
    declared = declare(target=target, sync_from_bucket=True)
    secret = declared.one("Secret", "llm-serving-model-sync-credentials")
    assert secret["stringData"] == {"credentials": "key = value"}
    volume = next(
        v for v in declared.pod_spec["volumes"]
        if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
    )
    sync_mounts = declared.pod_spec["initContainers"][0]["volumeMounts"]
    mount = next(m for m in sync_mounts if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": ModelSync.SECRET_FILES_DIR, "readOnly": True}


def test_server_container_never_mounts_sync_credentials() -> None:
    sync = gpu_target().model_sync
    assert sync is not None
    target = gpu_target(model_sync=replace(sync, secret_files={"credentials": "key = value"}))
    declared = declare(target=target, sync_from_bucket=True)
    credentials = next(
        v["name"] for v in declared.pod_spec["volumes"]
        if v.get("secret", {}).get("secretName") == "llm-serving-model-sync-credentials"
    )
    assert credentials not in {m["name"] for m in declared.server["volumeMounts"]}
