"""AWS: EKS (created with a GPU managed node group, or existing), an S3 model bucket read through
IRSA, gp3 volumes on the EBS CSI driver, an NLB through the AWS Load Balancer Controller, and a
CloudWatch Logs group for the logging agent.

Both the model-sync step and the logging agent get their own IAM role whose trust policy names
exactly one service account in the stack's namespace; no node-wide credentials are involved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.clouds import common
from infra.clouds.base import CloudTarget, LogSink, ModelSync
from infra.config import AwsClusterCreate, AwsConfig, StackConfig

# The retention periods CloudWatch Logs accepts.
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
TAINT_EFFECTS = {
    "NoSchedule": "NO_SCHEDULE",
    "NoExecute": "NO_EXECUTE",
    "PreferNoSchedule": "PREFER_NO_SCHEDULE",
}
STS_AUDIENCE = "sts.amazonaws.com"
GP3_STORAGE_CLASS = common.StorageClassSpec(
    name="gp3-encrypted",
    provisioner="ebs.csi.aws.com",
    parameters={"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"},
)


@dataclass(frozen=True)
class OidcIssuer:
    """The cluster's service account token issuer, as registered in IAM."""

    host: pulumi.Output[str]  # the issuer URL without https://, as IAM condition keys spell it
    provider_arn: pulumi.Output[str]


@dataclass(frozen=True)
class Cluster:
    name: pulumi.Input[str]
    kubeconfig: pulumi.Output[str]
    oidc: OidcIssuer
    dependencies: tuple[pulumi.Resource, ...] = ()


def _kubeconfig(
    name: pulumi.Input[str], endpoint: pulumi.Input[str], ca_data: pulumi.Input[str], region: str
) -> pulumi.Output[str]:
    """A kubeconfig that gets short-lived tokens from `aws eks get-token`, so it holds no credential."""

    def render(args: list[str]) -> str:
        cluster_name, server, ca = args
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": cluster_name, "cluster": {"server": server, "certificate-authority-data": ca}}
                ],
                "contexts": [
                    {"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}
                ],
                "current-context": cluster_name,
                "users": [
                    {
                        "name": cluster_name,
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": "aws",
                                "args": [
                                    "eks",
                                    "get-token",
                                    "--cluster-name",
                                    cluster_name,
                                    "--region",
                                    region,
                                ],
                            }
                        },
                    }
                ],
            }
        )

    return pulumi.Output.secret(pulumi.Output.all(name, endpoint, ca_data).apply(render))


def _service_role(name: str, service: str, policies: list[str], opts: pulumi.ResourceOptions) -> aws.iam.Role:
    role = aws.iam.Role(
        name,
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
        opts=opts,
    )
    for index, policy in enumerate(policies):
        aws.iam.RolePolicyAttachment(
            f"{name}-{index}", role=role.name, policy_arn=f"arn:aws:iam::aws:policy/{policy}", opts=opts
        )
    return role


def irsa_role(name: str, oidc: OidcIssuer, subject: str, opts: pulumi.ResourceOptions) -> aws.iam.Role:
    """An IAM role that only the pods of one service account (`subject`) can assume (IRSA)."""
    trust = pulumi.Output.all(oidc.host, oidc.provider_arn).apply(
        lambda args: json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Federated": args[1]},
                        "Action": "sts:AssumeRoleWithWebIdentity",
                        "Condition": {
                            "StringEquals": {f"{args[0]}:sub": subject, f"{args[0]}:aud": STS_AUDIENCE}
                        },
                    }
                ],
            },
            sort_keys=True,
        )
    )
    return aws.iam.Role(name, assume_role_policy=trust, opts=opts)


def irsa_role_with_policy(
    name: str, oidc: OidcIssuer, subject: str, policy: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> aws.iam.Role:
    role = irsa_role(name, oidc, subject, opts)
    aws.iam.RolePolicy(name, role=role.id, policy=policy, opts=opts)
    return role


def _create_cluster(
    config: StackConfig, spec: AwsClusterCreate, region: str, opts: pulumi.ResourceOptions
) -> Cluster:
    prefix = config.name
    cluster_role = _service_role(
        f"{prefix}-eks-cluster", "eks.amazonaws.com", ["AmazonEKSClusterPolicy"], opts
    )
    node_role = _service_role(
        f"{prefix}-eks-node",
        "ec2.amazonaws.com",
        ["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"],
        opts,
    )
    secrets_key = aws.kms.Key(
        f"{prefix}-eks-secrets",
        description="EKS secrets envelope encryption",
        enable_key_rotation=True,
        opts=opts,
    )
    cluster = aws.eks.Cluster(
        f"{prefix}-eks",
        name=f"{prefix}-{config.stack}",
        version=spec.version,
        role_arn=cluster_role.arn,
        vpc_config=aws.eks.ClusterVpcConfigArgs(
            subnet_ids=spec.subnet_ids,
            endpoint_private_access=True,
            endpoint_public_access=bool(spec.api_public_access_cidrs),
            public_access_cidrs=spec.api_public_access_cidrs or None,
        ),
        access_config=aws.eks.ClusterAccessConfigArgs(
            authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True
        ),
        encryption_config=aws.eks.ClusterEncryptionConfigArgs(
            resources=["secrets"],
            provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn),
        ),
        enabled_cluster_log_types=["api", "audit", "authenticator"],
        opts=opts,
    )
    issuer_url = cluster.identities.apply(lambda identities: identities[0].oidcs[0].issuer)
    oidc = aws.iam.OpenIdConnectProvider(
        f"{prefix}-eks-oidc", url=issuer_url, client_id_lists=[STS_AUDIENCE], opts=opts
    )
    system_pool = aws.eks.NodeGroup(
        f"{prefix}-system",
        cluster_name=cluster.name,
        node_role_arn=node_role.arn,
        subnet_ids=spec.subnet_ids,
        instance_types=[spec.system_node_pool.instance_type],
        ami_type="AL2023_x86_64_STANDARD",
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            min_size=spec.system_node_pool.size,
            max_size=spec.system_node_pool.size,
            desired_size=spec.system_node_pool.size,
        ),
        opts=opts,
    )
    pool = spec.node_pool
    gpu_pool = aws.eks.NodeGroup(
        f"{prefix}-gpu",
        cluster_name=cluster.name,
        node_role_arn=node_role.arn,
        subnet_ids=spec.subnet_ids,
        instance_types=[pool.instance_type],
        # The NVIDIA AMI ships the driver and container toolkit.
        ami_type="AL2023_x86_64_NVIDIA",
        disk_size=pool.disk_size_gb,
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            min_size=pool.min_size, max_size=pool.max_size, desired_size=pool.desired_size
        ),
        labels=dict([common.GPU_POOL_LABEL]),
        taints=[
            aws.eks.NodeGroupTaintArgs(
                key=common.GPU_TAINT.key,
                value=common.GPU_TAINT.value,
                effect=TAINT_EFFECTS[common.GPU_TAINT.effect],
            )
        ],
        opts=opts,
    )
    issuer = OidcIssuer(host=issuer_url.apply(_without_scheme), provider_arn=oidc.arn)
    ebs_role = irsa_role(
        f"{prefix}-ebs-csi",
        issuer,
        common.service_account_subject("kube-system", "ebs-csi-controller-sa"),
        opts,
    )
    aws.iam.RolePolicyAttachment(
        f"{prefix}-ebs-csi-policy",
        role=ebs_role.name,
        policy_arn="arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy",
        opts=opts,
    )
    ebs_addon = aws.eks.Addon(
        f"{prefix}-ebs-csi",
        cluster_name=cluster.name,
        addon_name="aws-ebs-csi-driver",
        service_account_role_arn=ebs_role.arn,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[system_pool])),
    )
    return Cluster(
        name=cluster.name,
        kubeconfig=_kubeconfig(
            cluster.name, cluster.endpoint, cluster.certificate_authority.apply(lambda ca: ca.data), region
        ),
        oidc=issuer,
        dependencies=(system_pool, gpu_pool, ebs_addon),
    )


def _without_scheme(url: str) -> str:
    return url.removeprefix("https://")


def _existing_cluster(config: StackConfig, name: str, region: str, invoke: pulumi.InvokeOptions) -> Cluster:
    found = aws.eks.get_cluster_output(name=name, opts=invoke)
    issuer_url = found.identities.apply(lambda identities: identities[0].oidcs[0].issuer)
    # IRSA needs the cluster's OIDC provider registered in IAM (eksctl utils associate-iam-oidc-provider).
    oidc = aws.iam.get_open_id_connect_provider_output(url=issuer_url, opts=invoke)
    return Cluster(
        name=name,
        kubeconfig=common.kubeconfig(
            config,
            lambda: _kubeconfig(
                name, found.endpoint, found.certificate_authorities.apply(lambda cas: cas[0].data), region
            ),
        ),
        oidc=OidcIssuer(host=issuer_url.apply(_without_scheme), provider_arn=oidc.arn),
    )


def _model_bucket(
    config: StackConfig, cloud: AwsConfig, opts: pulumi.ResourceOptions
) -> tuple[aws.s3.Bucket, aws.kms.Key]:
    """A private bucket: all public access blocked, ACLs off, SSE-KMS, versioned, TLS only."""
    prefix = config.name
    key = aws.kms.Key(
        f"{prefix}-models", description="model bucket encryption", enable_key_rotation=True, opts=opts
    )
    bucket = aws.s3.Bucket(
        f"{prefix}-models", bucket=common.bucket_name(config, cloud.bucket.name), opts=opts
    )
    aws.s3.BucketPublicAccessBlock(
        f"{prefix}-models",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=opts,
    )
    aws.s3.BucketOwnershipControls(
        f"{prefix}-models",
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=opts,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{prefix}-models",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms", kms_master_key_id=key.arn
                ),
                bucket_key_enabled=True,
            )
        ],
        opts=opts,
    )
    aws.s3.BucketVersioning(
        f"{prefix}-models",
        bucket=bucket.id,
        versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        opts=opts,
    )
    aws.s3.BucketPolicy(
        f"{prefix}-models",
        bucket=bucket.id,
        policy=common.json_document(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [bucket.arn, bucket.arn.apply(lambda arn: f"{arn}/*")],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            }
        ),
        opts=opts,
    )
    return bucket, key


def model_read_policy(
    bucket_arn: pulumi.Input[str], key_arn: pulumi.Input[str], prefix: str
) -> pulumi.Output[str]:
    """Read the weights under `prefix` and nothing else: list that prefix, get its objects, decrypt."""
    return common.json_document(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": bucket_arn,
                    "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
                },
                {
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": pulumi.Output.concat(bucket_arn, f"/{prefix}/*"),
                },
                {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn},
            ],
        }
    )


def _log_sink(
    config: StackConfig, cluster: Cluster, region: str, opts: pulumi.ResourceOptions
) -> tuple[LogSink, aws.cloudwatch.LogGroup]:
    retention = common.require_retention(
        config, lambda days: days in LOG_RETENTION_DAYS, ", ".join(map(str, LOG_RETENTION_DAYS))
    )
    group = aws.cloudwatch.LogGroup(
        f"{config.name}-logs",
        name=f"/{config.name}/{config.stack}/server",
        retention_in_days=retention,
        opts=opts,
    )
    role = irsa_role_with_policy(
        f"{config.name}-log-agent",
        cluster.oidc,
        common.service_account_subject(
            common.log_agent_namespace(config), common.log_agent_service_account(config)
        ),
        common.json_document(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        "Resource": [group.arn, group.arn.apply(lambda arn: f"{arn}:log-stream:*")],
                    }
                ],
            }
        ),
        opts,
    )
    sink = LogSink(
        kind="cloudwatch",
        outputs={
            "Name": "cloudwatch_logs",
            "region": region,
            "log_group_name": group.name,
            "log_stream_prefix": f"{config.name}-",
            "auto_create_group": "false",
        },
        service_account_annotations={"eks.amazonaws.com/role-arn": role.arn},
    )
    return sink, group


def load_balancer_annotations(cloud: AwsConfig) -> dict[str, str]:
    """An NLB from the AWS Load Balancer Controller, targeting pod IPs directly."""
    return {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": cloud.load_balancer_scheme,
    }


def build_target(config: StackConfig) -> CloudTarget:
    cloud = config.aws
    assert cloud is not None, "StackConfig checks that the aws section is present"
    provider = aws.Provider(f"{config.name}-aws", region=cloud.region)
    opts = pulumi.ResourceOptions(provider=provider)
    if cloud.cluster is not None:
        cluster = _create_cluster(config, cloud.cluster, cloud.region, opts)
    else:
        assert cloud.existing_cluster is not None
        cluster = _existing_cluster(
            config, cloud.existing_cluster.name, cloud.region, pulumi.InvokeOptions(provider=provider)
        )
    log_sink, log_group = _log_sink(config, cluster, cloud.region, opts)
    bucket, key = _model_bucket(config, cloud, opts)
    prefix = common.model_prefix(config)
    model_sync = None
    if common.uses_bucket(config):
        reader = irsa_role_with_policy(
            f"{config.name}-model-sync",
            cluster.oidc,
            common.service_account_subject(config.namespace, common.model_sync_service_account(config)),
            model_read_policy(bucket.arn, key.arn, prefix),
            opts,
        )
        model_sync = ModelSync(
            image=cloud.model_sync_image,
            command=common.s3_sync_command(f"s3://{common.bucket_name(config, cloud.bucket.name)}/{prefix}"),
            env={"AWS_REGION": cloud.region},
            service_account_annotations={"eks.amazonaws.com/role-arn": reader.arn},
        )
    return common.managed_cluster_target(
        config,
        cluster,
        GP3_STORAGE_CLASS,
        service_annotations=load_balancer_annotations(cloud),
        model_sync=model_sync,
        log_sink=log_sink,
        outputs={"clusterName": cluster.name, "modelBucket": bucket.bucket, "logGroup": log_group.name},
    )
