"""The Alibaba Cloud target under Pulumi's mock runtime: Pulumi.prod-alicloud.yaml (a created ACK
cluster) and the same stack on an existing cluster."""

from __future__ import annotations

from infra.config import StackConfig
from infra.render import RecordingMocks
from tests.infra.cloud_stacks import (
    KUBECONFIG,
    kubernetes_object,
    pod_spec,
    policy,
    resource,
    resources,
    stack_fixtures,
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

values, config, created, existing = stack_fixtures(STACK, EXISTING, {"kubeconfig": KUBECONFIG})


def _model_sync_trust(mocks: RecordingMocks, config: StackConfig) -> dict:
    """The one statement of the model-sync role's trust policy."""
    role = resource(mocks, "alicloud:ram/role:Role", f"{config.name}-model-sync")
    (statement,) = policy(role["assumeRolePolicyDocument"])["Statement"]
    return statement


def test_created_cluster_enables_rrsa(created: RecordingMocks) -> None:
    (cluster,) = resources(created, "alicloud:cs/managedKubernetes:ManagedKubernetes")
    assert cluster.inputs["enableRrsa"] is True



def test_existing_cluster_role_trusts_the_configured_rrsa_provider(
    existing: RecordingMocks, config: StackConfig
) -> None:
    statement = _model_sync_trust(existing, config)
    cluster = EXISTING["alicloud.existingCluster"]
    assert statement["Principal"]["Federated"] == [cluster["rrsaOidcProviderArn"]]
    assert statement["Condition"]["StringEquals"]["oidc:iss"] == cluster["rrsaOidcIssuerUrl"]



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
    statement = _model_sync_trust(created, config)
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
