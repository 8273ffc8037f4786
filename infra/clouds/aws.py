"""AWS: EKS (created with a GPU managed node group, or existing), an S3 model bucket read through
IRSA, gp3 volumes on the EBS CSI driver, an NLB through the AWS Load Balancer Controller, and a
CloudWatch Logs group for the logging agent.

Both the model-sync step and the logging agent get their own IAM role whose trust policy names
exactly one service account in the stack's namespace; no node-wide credentials are involved.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from infra.clouds import common
from infra.clouds.base import ChartRelease, CloudPlatform, CloudTarget, LogSink, ModelSync
from infra.clouds.common import CloudContext, Cluster, ModelBucket, OidcIssuer
from infra.config import AwsConfig, StackConfig

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
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
# EKS add-ons of the pod network, configured here: the VPC CNI with its NetworkPolicy agent on.
NETWORK_ADDONS: dict[str, dict[str, object]] = {"vpc-cni": {"enableNetworkPolicy": "true"}}
GP3_STORAGE_CLASS = common.StorageClassSpec(
    name="gp3-encrypted",
    provisioner="ebs.csi.aws.com",
    parameters={"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"},
)


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
    host = pulumi.Output.from_input(oidc.url).apply(_without_scheme)
    trust = pulumi.Output.all(host, oidc.provider_arn).apply(
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


def create_cluster(config: StackConfig, cloud: AwsConfig, context: CloudContext) -> Cluster:
    spec = cloud.cluster
    assert spec is not None
    prefix, opts = config.name, context.opts
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
    issuer = OidcIssuer(url=issuer_url, provider_arn=oidc.arn)
    # The VPC CNI enforces NetworkPolicy only when told to: without it the default-deny is decorative.
    network = [
        aws.eks.Addon(
            f"{prefix}-{name}", cluster_name=cluster.name, addon_name=name,
            configuration_values=json.dumps(configuration, sort_keys=True),
            # The cluster bootstraps the add-on unconfigured; this configuration replaces that one.
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=opts,
        )
        for name, configuration in NETWORK_ADDONS.items()
    ]
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
        opts=context.after(*network),
    )
    pool = spec.node_pool
    gpu_pool = aws.eks.NodeGroup(
        f"{prefix}-gpu",
        cluster_name=cluster.name,
        node_role_arn=node_role.arn,
        subnet_ids=spec.subnet_ids,
        instance_types=[pool.instance_type],
        # The NVIDIA AMI ships the driver and container toolkit, not the device plugin.
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
        opts=context.after(*network),
    )
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
        opts=context.after(system_pool),
    )
    return Cluster(
        id=cluster.name,
        kubeconfig=_kubeconfig(
            cluster.name, cluster.endpoint, cluster.certificate_authority.apply(lambda ca: ca.data),
            cloud.region,
        ),
        created=True,
        oidc=issuer,
        vpc_id=cluster.vpc_config.apply(lambda vpc: vpc.vpc_id),
        dependencies=(system_pool, gpu_pool, ebs_addon, *network),
    )


def _without_scheme(url: str) -> str:
    return url.removeprefix("https://")


def existing_cluster(config: StackConfig, cloud: AwsConfig, context: CloudContext) -> Cluster:
    assert cloud.existing_cluster is not None
    name = cloud.existing_cluster.name
    found = aws.eks.get_cluster_output(name=name, opts=context.invoke)
    issuer_url = found.identities.apply(lambda identities: identities[0].oidcs[0].issuer)
    # IRSA needs the cluster's OIDC provider registered in IAM (eksctl utils associate-iam-oidc-provider).
    oidc = aws.iam.get_open_id_connect_provider_output(url=issuer_url, opts=context.invoke)
    return Cluster(
        id=name,
        kubeconfig=common.kubeconfig(
            config,
            lambda: _kubeconfig(
                name, found.endpoint, found.certificate_authorities.apply(lambda cas: cas[0].data),
                cloud.region,
            ),
        ),
        created=False,
        oidc=OidcIssuer(url=issuer_url, provider_arn=oidc.arn),
        vpc_id=found.vpc_config.apply(lambda vpc: vpc.vpc_id),
    )


def model_bucket(config: StackConfig, cloud: AwsConfig, context: CloudContext) -> ModelBucket:
    """A private bucket: all public access blocked, ACLs off, SSE-KMS, versioned, TLS only."""
    prefix, opts = config.name, context.opts
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
    return ModelBucket(
        name=common.bucket_name(config, cloud.bucket.name), arn=bucket.arn, key_arn=key.arn,
        outputs={"modelBucket": bucket.bucket},
    )


def model_read_policy(
    bucket_arn: pulumi.Input[str], key_arn: pulumi.Input[str], prefixes: list[str]
) -> pulumi.Output[str]:
    """Read the weights under `prefixes` and nothing else: list them, get their objects, decrypt."""
    return common.json_document(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": bucket_arn,
                    "Condition": {"StringLike": {"s3:prefix": common.prefix_patterns(prefixes)}},
                },
                {
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": [pulumi.Output.concat(bucket_arn, f"/{p}/*") for p in prefixes],
                },
                {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn},
            ],
        }
    )


def log_sink(
    config: StackConfig, cloud: AwsConfig, cluster: Cluster, context: CloudContext
) -> tuple[LogSink, dict[str, pulumi.Input[str]]]:
    retention = common.require_retention(
        config, lambda days: days in LOG_RETENTION_DAYS, ", ".join(map(str, LOG_RETENTION_DAYS))
    )
    opts, region = context.opts, cloud.region
    assert cluster.oidc is not None, "EKS clusters always have an issuer"
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
    return sink, {"logGroup": group.name}


def load_balancer_annotations(cloud: AwsConfig) -> dict[str, str]:
    """An NLB from the AWS Load Balancer Controller, targeting pod IPs directly."""
    return {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": cloud.load_balancer_scheme,
    }


def model_sync(
    config: StackConfig, cloud: AwsConfig, cluster: Cluster, bucket: ModelBucket, context: CloudContext
) -> ModelSync:
    assert cluster.oidc is not None, "EKS clusters always have an issuer"
    reader = irsa_role_with_policy(
        f"{config.name}-model-sync",
        cluster.oidc,
        common.service_account_subject(config.namespace, common.model_sync_service_account(config)),
        model_read_policy(bucket.arn, bucket.key_arn, common.model_prefixes(config)),
        context.opts,
    )
    return ModelSync(
        image=cloud.model_sync_image,
        bucket=bucket.name,
        copy_command=common.s3_sync(bucket.name),
        env={"AWS_REGION": cloud.region},
        service_account_annotations={"eks.amazonaws.com/role-arn": reader.arn},
    )


def platform(config: StackConfig, cloud: AwsConfig, cluster: Cluster, context: CloudContext) -> CloudPlatform:
    """EKS installs no device plugin, no load balancer controller and no node autoscaler: the platform
    layer does, each controller with an IRSA role of its own."""
    assert cluster.oidc is not None, "EKS clusters always have an issuer"
    releases = []
    if config.platform.installs("load_balancer_controller", cluster.created):
        role = irsa_role_with_policy(
            f"{config.name}-lb-controller", cluster.oidc,
            common.service_account_subject("kube-system", LB_CONTROLLER_SERVICE_ACCOUNT),
            common.json_document(load_balancer_controller_policy()), context.opts,
        )
        releases.append(ChartRelease("aws-load-balancer-controller", {
            "clusterName": cluster.id,
            "region": cloud.region,
            "vpcId": cluster.vpc_id,
            "serviceAccount": {
                "create": True, "name": LB_CONTROLLER_SERVICE_ACCOUNT,
                "annotations": {"eks.amazonaws.com/role-arn": role.arn},
            },
        }, before_others=True))
    if config.platform.installs("node_autoscaler", cluster.created):
        role = irsa_role_with_policy(
            f"{config.name}-cluster-autoscaler", cluster.oidc,
            common.service_account_subject("kube-system", AUTOSCALER_SERVICE_ACCOUNT),
            pulumi.Output.from_input(cluster.id).apply(
                lambda name: json.dumps(cluster_autoscaler_policy(name), sort_keys=True)
            ),
            context.opts,
        )
        releases.append(ChartRelease("cluster-autoscaler", {
            "cloudProvider": "aws",
            "awsRegion": cloud.region,
            # Managed node groups tag their Auto Scaling groups for discovery by cluster name.
            "autoDiscovery": {"clusterName": cluster.id},
            "rbac": {"serviceAccount": {
                "create": True, "name": AUTOSCALER_SERVICE_ACCOUNT,
                "annotations": {"eks.amazonaws.com/role-arn": role.arn},
            }},
            # Nodes that run only DaemonSets and kube-system pods may go once the GPU pods left them.
            "extraArgs": {"balance-similar-node-groups": True, "skip-nodes-with-system-pods": False},
        }))
    return CloudPlatform(
        releases=releases, needs_device_plugin=True,
        load_balancer_annotations=load_balancer_annotations(cloud),
    )


def load_balancer_controller_policy() -> dict[str, object]:
    """What the controller needs to run NLBs for Services: read the network, manage load balancers and
    target groups it tagged, and the security groups of their targets."""
    tagged = {"Null": {"aws:ResourceTag/elbv2.k8s.aws/cluster": "false"}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iam:CreateServiceLinkedRole", "Resource": "*",
             "Condition": {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}}},
            {"Effect": "Allow", "Resource": "*", "Action": [
                "ec2:Describe*", "ec2:GetSecurityGroupsForVpc", "elasticloadbalancing:Describe*",
                "acm:ListCertificates",
                "acm:DescribeCertificate", "shield:GetSubscriptionState", "wafv2:GetWebACLForResource",
            ]},
            {"Effect": "Allow", "Resource": "*", "Action": [
                "ec2:CreateSecurityGroup", "ec2:CreateTags", "ec2:AuthorizeSecurityGroupIngress",
                "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup",
                "elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup",
                "elasticloadbalancing:CreateListener", "elasticloadbalancing:AddTags",
            ]},
            {"Effect": "Allow", "Resource": "*", "Condition": tagged, "Action": [
                "elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetSecurityGroups",
                "elasticloadbalancing:SetSubnets", "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:ModifyTargetGroup", "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup", "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:DeleteListener", "elasticloadbalancing:ModifyListenerAttributes",
                "elasticloadbalancing:RegisterTargets",
                "elasticloadbalancing:DeregisterTargets", "elasticloadbalancing:RemoveTags",
            ]},
        ],
    }


def cluster_autoscaler_policy(cluster_name: str) -> dict[str, object]:
    """Read every Auto Scaling group; resize only those tagged as this cluster's."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Resource": "*", "Action": [
                "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
                "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements",
                "eks:DescribeNodegroup",
            ]},
            {"Effect": "Allow", "Resource": "*",
             "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
             "Condition": {"StringEquals": {
                 f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned",
             }}},
        ],
    }


def _section(config: StackConfig) -> AwsConfig:
    assert config.aws is not None, "StackConfig checks that the aws section is present"
    return config.aws


AWS = common.ManagedCloud[AwsConfig](
    section=_section,
    provider=lambda config, cloud: aws.Provider(f"{config.name}-aws", region=cloud.region),
    storage=GP3_STORAGE_CLASS,
    create_cluster=create_cluster,
    existing_cluster=existing_cluster,
    model_bucket=model_bucket,
    model_sync=model_sync,
    log_sink=log_sink,
    load_balancer_annotations=load_balancer_annotations,
    platform=platform,
)


def build_target(config: StackConfig) -> CloudTarget:
    return common.build_target(config, AWS)
