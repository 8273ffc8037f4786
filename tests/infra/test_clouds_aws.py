"""The AWS target under Pulumi's mock runtime: Pulumi.prod.yaml (a created EKS cluster) and the same
stack on an existing cluster."""

from __future__ import annotations

import pulumi
import pytest

from infra.clouds.common import log_agent_namespace, log_agent_service_account, service_account_subject
from infra.config import StackConfig
from infra.render import RecordingMocks
from tests.infra.cloud_stacks import (
    kubernetes_object,
    pod_spec,
    policy,
    resource,
    resources,
    run_stack,
    stack_fixtures,
    with_changes,
)

STACK = "prod"
EXISTING = {"aws.cluster": None, "aws.existingCluster": {"name": "team-gpu"}}

values, config, created, existing = stack_fixtures(STACK, EXISTING)


def _role(mocks: RecordingMocks, name: str) -> tuple[dict, dict]:
    """Trust policy and inline policy of an IRSA role."""
    trust = policy(resource(mocks, "aws:iam/role:Role", name)["assumeRolePolicy"])
    inline = policy(resource(mocks, "aws:iam/rolePolicy:RolePolicy", name)["policy"])
    return trust, inline





def test_system_pool_is_untainted(created: RecordingMocks, config: StackConfig) -> None:
    assert "taints" not in resource(created, "aws:eks/nodeGroup:NodeGroup", f"{config.name}-system")


def test_model_bucket_is_private_encrypted_and_versioned(
    created: RecordingMocks, config: StackConfig
) -> None:
    name = f"{config.name}-models"
    bucket_id = f"{name}-id"
    block = resource(created, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", name)
    assert block["bucket"] == bucket_id
    assert all(
        block[key] is True
        for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    sse = resource(
        created,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        name,
    )
    assert sse["bucket"] == bucket_id
    assert sse["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    versioning = resource(created, "aws:s3/bucketVersioning:BucketVersioning", name)
    assert (versioning["bucket"], versioning["versioningConfiguration"]["status"]) == (bucket_id, "Enabled")


def test_model_sync_role_trusts_only_the_serving_service_account(
    created: RecordingMocks, config: StackConfig
) -> None:
    trust, _ = _role(created, f"{config.name}-model-sync")
    (statement,) = trust["Statement"]
    conditions = statement["Condition"]["StringEquals"]
    service_account = pod_spec(created, config)["serviceAccountName"]
    subjects = [v for k, v in conditions.items() if k.endswith(":sub")]
    audiences = [v for k, v in conditions.items() if k.endswith(":aud")]
    assert subjects == [f"system:serviceaccount:{config.namespace}:{service_account}"]
    assert audiences == ["sts.amazonaws.com"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"


def test_model_sync_policy_reads_only_the_bucket_prefix(created: RecordingMocks, config: StackConfig) -> None:
    _, inline = _role(created, f"{config.name}-model-sync")
    bucket_arn = f"arn:aws:mock:::{config.name}-models"
    prefix = config.model.bucket_prefix.strip("/")
    actions = {s["Action"]: s for s in inline["Statement"]}
    assert set(actions) == {"s3:ListBucket", "s3:GetObject", "kms:Decrypt"}
    assert actions["s3:GetObject"]["Resource"] == [f"{bucket_arn}/{prefix}/*"]
    assert actions["s3:ListBucket"]["Resource"] == bucket_arn
    assert actions["s3:ListBucket"]["Condition"]["StringLike"]["s3:prefix"] == [prefix, f"{prefix}/*"]


def test_service_account_carries_the_model_sync_role(created: RecordingMocks, config: StackConfig) -> None:
    manifest = kubernetes_object(created, "ServiceAccount", pod_spec(created, config)["serviceAccountName"])
    assert manifest["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        f"arn:aws:mock:::{config.name}-model-sync"
    )





def test_log_agent_role_may_write_only_to_the_log_group(created: RecordingMocks, config: StackConfig) -> None:
    trust, inline = _role(created, f"{config.name}-log-agent")
    (statement,) = inline["Statement"]
    group_arn = f"arn:aws:mock:::{config.name}-logs"
    assert all(resource_arn.startswith(group_arn) for resource_arn in statement["Resource"])
    (trust_statement,) = trust["Statement"]
    subject = service_account_subject(log_agent_namespace(config), log_agent_service_account(config))
    assert subject in trust_statement["Condition"]["StringEquals"].values()



def test_declares_no_deprecated_aws_resource_or_argument(
    values: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pulumi_aws logs a warning when a deprecated resource (e.g. s3 BucketVersioningV2) or argument
    is declared. (Importing `pulumi_aws.s3` alone raises DeprecationWarnings for every V2 class it
    defines, used or not: those say nothing about this program.)"""
    logged: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: logged.append(message))
    run_stack(STACK, values)
    run_stack(STACK, with_changes(values, EXISTING))
    assert [message for message in logged if "deprecated" in message] == []


@pytest.mark.parametrize(
    ("chart", "role", "service_account"),
    [
        ("aws-load-balancer-controller", "lb-controller", "aws-load-balancer-controller"),
        ("cluster-autoscaler", "cluster-autoscaler", "cluster-autoscaler"),
    ],
)
def test_cloud_controllers_get_irsa_roles_of_their_own(
    created: RecordingMocks, config: StackConfig, chart: str, role: str, service_account: str
) -> None:
    releases = resources(created, "kubernetes:helm.sh/v3:Release")
    (release,) = [r.inputs for r in releases if r.inputs["name"] == chart]
    values = release["values"]
    account = values["serviceAccount"] if "serviceAccount" in values else values["rbac"]["serviceAccount"]
    trust, _ = _role(created, f"{config.name}-{role}")
    assert account["annotations"]["eks.amazonaws.com/role-arn"] == f"arn:aws:mock:::{config.name}-{role}"
    assert account["name"] == service_account
    (statement,) = trust["Statement"]
    subjects = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert subjects == [f"system:serviceaccount:kube-system:{service_account}"]
