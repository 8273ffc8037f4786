"""The Alibaba Cloud target under Pulumi's mock runtime: Pulumi.prod-alicloud.yaml (a created ACK
cluster) and the same stack on an existing cluster."""

from __future__ import annotations

import pytest

from infra.clouds.alicloud import LB_ANNOTATION
from infra.config import ConfigError, StackConfig
from infra.render import RecordingMocks
from tests.infra.cloud_stacks import (
    KUBECONFIG,
    kubernetes_object,
    load_config,
    pod_spec,
    policy,
    resource,
    resources,
    run_stack,
    stack_values,
    tolerates,
    with_changes,
)

STACK = "prod-alicloud"
EXISTING = {
    "alicloud.cluster": None,
    "alicloud.existingCluster": {
        "name": "c0123456789abcdef",
        "rrsaOidcProviderArn": "acs:ram::1234567890:oidc-provider/ack-rrsa-c0123456789abcdef",
        "rrsaOidcIssuerUrl": "https://oidc-ack.cn-hangzhou.aliyuncs.com/c0123456789abcdef",
    },
}


@pytest.fixture(scope="module")
def values() -> dict:
    return stack_values(STACK)


@pytest.fixture(scope="module")
def config(values: dict) -> StackConfig:
    return load_config(STACK, values)


@pytest.fixture(scope="module")
def created(values: dict) -> RecordingMocks:
    return run_stack(STACK, values)


@pytest.fixture(scope="module")
def existing(values: dict) -> RecordingMocks:
    return run_stack(STACK, with_changes(values, EXISTING), secrets={"kubeconfig": KUBECONFIG})


def test_created_cluster_enables_rrsa(created: RecordingMocks) -> None:
    (cluster,) = resources(created, "alicloud:cs/managedKubernetes:ManagedKubernetes")
    assert cluster.inputs["enableRrsa"] is True


def test_existing_cluster_declares_no_cluster_or_node_pool(existing: RecordingMocks) -> None:
    assert resources(existing, "alicloud:cs/managedKubernetes:ManagedKubernetes") == []
    assert resources(existing, "alicloud:cs/nodePool:NodePool") == []


def test_existing_cluster_role_trusts_the_configured_rrsa_provider(
    existing: RecordingMocks, config: StackConfig
) -> None:
    trust = policy(
        resource(existing, "alicloud:ram/role:Role", f"{config.name}-model-sync")["assumeRolePolicyDocument"]
    )
    (statement,) = trust["Statement"]
    cluster = EXISTING["alicloud.existingCluster"]
    assert statement["Principal"]["Federated"] == [cluster["rrsaOidcProviderArn"]]
    assert statement["Condition"]["StringEquals"]["oidc:iss"] == cluster["rrsaOidcIssuerUrl"]


def test_gpu_pool_taint_and_labels_match_the_workload(created: RecordingMocks, config: StackConfig) -> None:
    spec = pod_spec(created, config)
    pool = resource(created, "alicloud:cs/nodePool:NodePool", f"{config.name}-gpu")
    assert pool["taints"]
    for taint in pool["taints"]:
        assert tolerates(spec["tolerations"], taint["key"], taint.get("value"), taint["effect"])
    labels = {label["key"]: label["value"] for label in pool["labels"]}
    assert labels.items() <= spec["nodeSelector"].items()


def test_model_bucket_is_private_encrypted_and_versioned(
    created: RecordingMocks, config: StackConfig
) -> None:
    name = f"{config.name}-models"
    bucket = resource(created, "alicloud:oss/bucket:Bucket", name)["bucket"]
    block = resource(created, "alicloud:oss/bucketPublicAccessBlock:BucketPublicAccessBlock", name)
    acl = resource(created, "alicloud:oss/bucketAcl:BucketAcl", name)
    sse = resource(created, "alicloud:oss/bucketServerSideEncryption:BucketServerSideEncryption", name)
    versioning = resource(created, "alicloud:oss/bucketVersioning:BucketVersioning", name)
    assert {block["bucket"], acl["bucket"], sse["bucket"], versioning["bucket"]} == {bucket}
    assert block["blockPublicAccess"] is True
    assert acl["acl"] == "private"
    assert sse["sseAlgorithm"] in ("AES256", "KMS")
    assert versioning["status"] == "Enabled"


def test_model_sync_role_trusts_only_the_serving_service_account(
    created: RecordingMocks, config: StackConfig
) -> None:
    trust = policy(
        resource(created, "alicloud:ram/role:Role", f"{config.name}-model-sync")["assumeRolePolicyDocument"]
    )
    (statement,) = trust["Statement"]
    conditions = statement["Condition"]["StringEquals"]
    service_account = pod_spec(created, config)["serviceAccountName"]
    assert conditions["oidc:sub"] == f"system:serviceaccount:{config.namespace}:{service_account}"
    assert conditions["oidc:aud"] == "sts.aliyuncs.com"


def test_model_sync_policy_reads_only_the_bucket_prefix(created: RecordingMocks, config: StackConfig) -> None:
    bucket = resource(created, "alicloud:oss/bucket:Bucket", f"{config.name}-models")["bucket"]
    prefix = config.model.bucket_prefix.strip("/")
    document = policy(
        resource(created, "alicloud:ram/policy:Policy", f"{config.name}-model-read")["policyDocument"]
    )
    by_action = {action: s for s in document["Statement"] for action in s["Action"]}
    assert set(by_action) == {"oss:ListObjects", "oss:GetObject"}
    assert by_action["oss:GetObject"]["Resource"] == [f"acs:oss:*:*:{bucket}/{prefix}/*"]
    assert by_action["oss:ListObjects"]["Condition"]["StringLike"]["oss:Prefix"] == [prefix, f"{prefix}/*"]


def test_service_account_names_the_model_sync_role(created: RecordingMocks, config: StackConfig) -> None:
    role_name = resource(created, "alicloud:ram/role:Role", f"{config.name}-model-sync")["roleName"]
    account = kubernetes_object(created, "ServiceAccount", pod_spec(created, config)["serviceAccountName"])
    assert account["metadata"]["annotations"]["pod-identity.alibabacloud.com/role-name"] == role_name


def test_service_uses_current_annotation_prefix_and_configured_address_type(
    created: RecordingMocks, config: StackConfig
) -> None:
    (service,) = [o for o in created.kubernetes_objects() if o["kind"] == "Service"]
    annotations = service["metadata"]["annotations"]
    assert config.alicloud is not None
    assert annotations[f"{LB_ANNOTATION}address-type"] == config.alicloud.load_balancer_address_type
    assert not [key for key in annotations if "alicloud-loadbalancer" in key]


def test_model_volume_uses_encrypted_essd(created: RecordingMocks) -> None:
    (claim,) = [o for o in created.kubernetes_objects() if o["kind"] == "PersistentVolumeClaim"]
    (storage_class,) = [o for o in created.kubernetes_objects() if o["kind"] == "StorageClass"]
    assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert storage_class["parameters"]["type"] == "cloud_essd"
    assert storage_class["parameters"]["encrypted"] == "true"


def test_logstore_keeps_logs_for_the_configured_retention(
    created: RecordingMocks, config: StackConfig
) -> None:
    (store,) = resources(created, "alicloud:log/store:Store")
    assert store.inputs["retentionPeriod"] == config.logging.retention_days


def test_log_writer_may_post_only_to_the_logstore(created: RecordingMocks, config: StackConfig) -> None:
    store = resource(created, "alicloud:log/store:Store", f"{config.name}-logs")
    document = policy(
        resource(created, "alicloud:ram/policy:Policy", f"{config.name}-log-write")["policyDocument"]
    )
    (statement,) = document["Statement"]
    assert statement["Action"] == ["log:PostLogStoreLogs"]
    assert [
        r.endswith(f"project/{store['projectName']}/logstore/{store['logstoreName']}")
        for r in statement["Resource"]
    ] == [True]


def test_retention_sls_does_not_offer_stops_naming_the_key(values: dict) -> None:
    with pytest.raises(ConfigError, match=r"llm-serving:logging\.retentionDays"):
        run_stack(STACK, with_changes(values, {"logging.retentionDays": 3650 + 1}))
