"""The Tencent Cloud target under Pulumi's mock runtime: Pulumi.prod-tencent.yaml (a created TKE
cluster) and the same stack on an existing cluster."""

from __future__ import annotations

from infra.clouds.base import ModelSync
from infra.clouds.tencent import CREDENTIALS_FILE, build_target
from infra.config import StackConfig
from infra.render import RecordingMocks, run_program
from tests.infra.cloud_stacks import (
    KUBECONFIG,
    policy,
    resource,
    resources,
    run_stack,
    stack_fixtures,
    with_changes,
)

STACK = "prod-tencent"
EXISTING = {"tencent.cluster": None, "tencent.existingCluster": {"name": "cls-0123abcd"}}

values, config, created, existing = stack_fixtures(STACK, EXISTING, {"kubeconfig": KUBECONFIG})


def _policy_of(mocks: RecordingMocks, name: str) -> dict:
    return policy(resource(mocks, "tencentcloud:Cam/policy:Policy", name)["document"])


def test_created_cluster_is_managed(created: RecordingMocks) -> None:
    (cluster,) = resources(created, "tencentcloud:Kubernetes/cluster:Cluster")
    assert cluster.inputs["clusterDeployType"] == "MANAGED_CLUSTER"




def test_model_bucket_is_private_encrypted_and_versioned(
    created: RecordingMocks, config: StackConfig
) -> None:
    bucket = resource(created, "tencentcloud:Cos/bucket:Bucket", f"{config.name}-models")
    assert bucket["acl"] == "private"
    assert bucket["encryptionAlgorithm"] in ("AES256", "KMS", "cos/kms")
    assert bucket["versioningEnable"] is True
    assert resources(created, "tencentcloud:Cos/bucketPolicy:BucketPolicy") == []


def test_model_sync_key_may_read_only_the_bucket_prefix(created: RecordingMocks, config: StackConfig) -> None:
    bucket = resource(created, "tencentcloud:Cos/bucket:Bucket", f"{config.name}-models")["bucket"]
    prefix = config.model.bucket_prefix.strip("/")
    by_action = {
        a: s for s in _policy_of(created, f"{config.name}-model-sync")["statement"] for a in s["action"]
    }
    assert set(by_action) == {"name/cos:GetBucket", "name/cos:GetObject", "name/cos:HeadObject"}
    assert all(r.endswith(f":{bucket}/{prefix}/*") for r in by_action["name/cos:GetObject"]["resource"])
    assert all(r.endswith(f":{bucket}/*") for r in by_action["name/cos:GetBucket"]["resource"])


def test_model_sync_key_is_a_secret_file_not_an_env_value(config: StackConfig) -> None:
    """The key reaches the init container only through `secret_files`; its env points at that file."""
    seen: list[ModelSync] = []
    run_program(lambda: seen.append(build_target(config).model_sync), STACK, {}, [])
    (sync,) = seen
    assert set(sync.secret_files) == {CREDENTIALS_FILE}
    assert sync.env["AWS_SHARED_CREDENTIALS_FILE"] == f"{ModelSync.SECRET_FILES_DIR}/{CREDENTIALS_FILE}"
    assert all(isinstance(value, str) for value in sync.env.values())





def test_log_writer_may_write_only_to_the_topic(created: RecordingMocks, config: StackConfig) -> None:
    topic_id = f"{config.name}-logs-id"
    (statement,) = _policy_of(created, f"{config.name}-log-agent")["statement"]
    assert [r.endswith(f":topic/{topic_id}") for r in statement["resource"]] == [True]


def test_gpu_pool_gets_the_configured_driver(values: dict) -> None:
    driver = {"name": "NVIDIA-Linux-x86_64-535.161.08", "version": "535.161.08"}
    mocks = run_stack(STACK, with_changes(values, {"tencent.cluster.nodePool.gpuDriver": driver}))
    pool = resource(mocks, "tencentcloud:Kubernetes/nodePool:NodePool", "llm-serving-gpu")
    assert pool["nodeConfig"]["gpuArgs"]["driver"] == driver
