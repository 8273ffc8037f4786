"""Alibaba Cloud: ACK (a managed cluster with a GPU node pool, or existing), an OSS model bucket read
through RRSA, ESSD volumes, an intranet or internet CLB, and an SLS project and logstore.

RRSA is ACK's service-account-to-RAM-role federation: the ack-pod-identity-webhook injects the OIDC
token and role into pods of annotated service accounts, and the role's trust policy names exactly
one service account. SLS takes logs from fluent-bit over its Kafka-compatible endpoint, which
accepts only an AccessKey, so the logging agent gets a RAM user allowed to write to one logstore.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_alicloud as alicloud

from infra.clouds import common
from infra.clouds.base import CloudPlatform, CloudTarget, LogSink, ModelSync
from infra.clouds.common import CloudContext, Cluster, ModelBucket, OidcIssuer
from infra.config import AlicloudConfig, StackConfig

STS_AUDIENCE = "sts.aliyuncs.com"
ESSD_STORAGE_CLASS = common.StorageClassSpec(
    name="alicloud-disk-essd-encrypted",
    provisioner="diskplugin.csi.alibabacloud.com",
    parameters={"type": "cloud_essd", "performanceLevel": "PL1", "encrypted": "true", "fstype": "ext4"},
)
LB_ANNOTATION = "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-"
# Add-ons a new cluster gets: Terway (flannel does not enforce NetworkPolicy; Terway does, when told
# to), disk CSI, and the webhook that makes RRSA transparent to pods.
CLUSTER_ADDONS: dict[str, dict[str, str]] = {
    "terway-eniip": {"NetworkPolicy": "true"},
    "csi-plugin": {},
    "csi-provisioner": {},
    "ack-pod-identity-webhook": {},
}
MAX_LOG_RETENTION_DAYS = 3650


def _issued_kubeconfig(cluster_id: pulumi.Input[str], invoke: pulumi.InvokeOptions) -> pulumi.Output[str]:
    credential = alicloud.cs.get_cluster_credential_output(cluster_id=cluster_id, opts=invoke)
    return pulumi.Output.secret(credential.kube_config)


def create_cluster(config: StackConfig, cloud: AlicloudConfig, context: CloudContext) -> Cluster:
    spec = cloud.cluster
    assert spec is not None
    prefix, opts = config.name, context.opts
    cluster = alicloud.cs.ManagedKubernetes(
        f"{prefix}-ack",
        name=f"{prefix}-{config.stack}",
        cluster_spec=spec.cluster_spec,
        version=spec.version,
        vswitch_ids=spec.subnet_ids,
        pod_vswitch_ids=spec.pod_vswitch_ids or spec.subnet_ids,
        service_cidr=spec.service_cidr,
        enable_rrsa=True,
        slb_internet_enabled=spec.api_public,
        deletion_protection=True,
        addons=[
            alicloud.cs.ManagedKubernetesAddonArgs(
                name=name, config=json.dumps(settings, sort_keys=True) if settings else None
            )
            for name, settings in CLUSTER_ADDONS.items()
        ],
        opts=opts,
    )
    system_pool = alicloud.cs.NodePool(
        f"{prefix}-system",
        cluster_id=cluster.id,
        node_pool_name="system",
        vswitch_ids=spec.subnet_ids,
        instance_types=[spec.system_node_pool.instance_type],
        desired_size=str(spec.system_node_pool.size),
        system_disk_category="cloud_essd",
        system_disk_encrypted=True,
        opts=opts,
    )
    pool = spec.node_pool
    gpu_pool = alicloud.cs.NodePool(
        f"{prefix}-gpu",
        cluster_id=cluster.id,
        node_pool_name="gpu",
        vswitch_ids=spec.subnet_ids,
        instance_types=[pool.instance_type],
        # ACK's node autoscaler grows and shrinks this pool between its bounds.
        scaling_config=alicloud.cs.NodePoolScalingConfigArgs(
            enable=True, min_size=pool.min_size, max_size=pool.max_size
        ),
        system_disk_category="cloud_essd",
        system_disk_size=pool.disk_size_gb,
        system_disk_encrypted=True,
        labels=[alicloud.cs.NodePoolLabelArgs(key=common.GPU_POOL_LABEL[0], value=common.GPU_POOL_LABEL[1])],
        taints=[
            alicloud.cs.NodePoolTaintArgs(
                key=common.GPU_TAINT.key, value=common.GPU_TAINT.value, effect=common.GPU_TAINT.effect
            )
        ],
        opts=opts,
    )
    return Cluster(
        id=cluster.id,
        kubeconfig=_issued_kubeconfig(cluster.id, context.invoke),
        created=True,
        oidc=OidcIssuer(
            url=cluster.rrsa_metadata.apply(lambda rrsa: rrsa.rrsa_oidc_issuer_url),
            provider_arn=cluster.rrsa_metadata.apply(lambda rrsa: rrsa.ram_oidc_provider_arn),
        ),
        dependencies=(system_pool, gpu_pool),
    )


def existing_cluster(config: StackConfig, cloud: AlicloudConfig, context: CloudContext) -> Cluster:
    existing = cloud.existing_cluster
    assert existing is not None
    return Cluster(
        id=existing.name,
        kubeconfig=common.kubeconfig(config, lambda: _issued_kubeconfig(existing.name, context.invoke)),
        created=False,
        oidc=OidcIssuer(url=existing.rrsa_oidc_issuer_url, provider_arn=existing.rrsa_oidc_provider_arn),
    )


def rrsa_trust_policy(oidc: OidcIssuer, subject: str) -> pulumi.Output[str]:
    """Only tokens the cluster issued to `subject`, for Alibaba Cloud STS, may assume the role."""
    return common.json_document(
        {
            "Version": "1",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "sts:AssumeRole",
                    "Principal": {"Federated": [oidc.provider_arn]},
                    "Condition": {
                        "StringEquals": {
                            "oidc:aud": STS_AUDIENCE,
                            "oidc:iss": oidc.url,
                            "oidc:sub": subject,
                        }
                    },
                }
            ],
        }
    )


def model_read_policy(bucket: str, prefixes: list[str]) -> pulumi.Output[str]:
    """List the weights' prefixes and read their objects; nothing else in OSS."""
    return common.json_document(
        {
            "Version": "1",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["oss:ListObjects"],
                    "Resource": [f"acs:oss:*:*:{bucket}"],
                    "Condition": {"StringLike": {"oss:Prefix": common.prefix_patterns(prefixes)}},
                },
                {
                    "Effect": "Allow",
                    "Action": ["oss:GetObject"],
                    "Resource": [f"acs:oss:*:*:{bucket}/{prefix}/*" for prefix in prefixes],
                },
            ],
        }
    )


def model_bucket(config: StackConfig, cloud: AlicloudConfig, context: CloudContext) -> ModelBucket:
    """A private bucket: public access blocked, private ACL, server-side encrypted, versioned."""
    prefix, opts, name = config.name, context.opts, common.bucket_name(config, cloud.bucket.name)
    bucket = alicloud.oss.Bucket(f"{prefix}-models", bucket=name, opts=opts)
    alicloud.oss.BucketAcl(f"{prefix}-models", bucket=bucket.bucket, acl="private", opts=opts)
    alicloud.oss.BucketPublicAccessBlock(
        f"{prefix}-models", bucket=bucket.bucket, block_public_access=True, opts=opts
    )
    alicloud.oss.BucketServerSideEncryption(
        f"{prefix}-models", bucket=bucket.bucket, sse_algorithm="AES256", opts=opts
    )
    alicloud.oss.BucketVersioning(f"{prefix}-models", bucket=bucket.bucket, status="Enabled", opts=opts)
    return ModelBucket(name=name, outputs={"modelBucket": bucket.bucket})


def _custom_policy(
    resource_name: str, policy_name: str, document: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> alicloud.ram.Policy:
    return alicloud.ram.Policy(resource_name, policy_name=policy_name, policy_document=document, opts=opts)


def _attached(policy: alicloud.ram.Policy) -> dict[str, pulumi.Input[str]]:
    """The arguments that name a custom policy in a role's or a user's policy attachment."""
    return {"policy_name": policy.policy_name, "policy_type": "Custom"}


def _model_reader(
    config: StackConfig, oidc: OidcIssuer, bucket: str, opts: pulumi.ResourceOptions
) -> alicloud.ram.Role:
    name = f"{config.name}-{config.stack}-model-sync"
    role = alicloud.ram.Role(
        f"{config.name}-model-sync",
        role_name=name,
        description="Reads the model weights; assumable only by the serving pods' service account (RRSA).",
        assume_role_policy_document=rrsa_trust_policy(
            oidc,
            common.service_account_subject(config.namespace, common.model_sync_service_account(config)),
        ),
        opts=opts,
    )
    policy = _custom_policy(
        f"{config.name}-model-read", name, model_read_policy(bucket, common.model_prefixes(config)), opts
    )
    alicloud.ram.RolePolicyAttachment(
        f"{config.name}-model-sync", role_name=role.role_name, **_attached(policy), opts=opts
    )
    return role


def log_sink(
    config: StackConfig, cloud: AlicloudConfig, cluster: Cluster, context: CloudContext
) -> tuple[LogSink, dict[str, pulumi.Input[str]]]:
    retention = common.require_retention_up_to(config, MAX_LOG_RETENTION_DAYS)
    prefix, region, opts = config.name, cloud.region, context.opts
    project = alicloud.log.Project(
        f"{prefix}-logs",
        project_name=f"{prefix}-{config.stack}-logs",
        description="llm-serving server logs",
        opts=opts,
    )
    store = alicloud.log.Store(
        f"{prefix}-logs",
        project_name=project.project_name,
        logstore_name="server",
        retention_period=retention,
        shard_count=2,
        auto_split=True,
        max_split_shard_count=16,
        opts=opts,
    )
    writer = alicloud.ram.User(
        f"{prefix}-log-agent",
        name=f"{prefix}-{config.stack}-log-agent",
        comments="fluent-bit: writes to one SLS logstore",
        opts=opts,
    )
    policy = _custom_policy(
        f"{prefix}-log-write",
        f"{prefix}-{config.stack}-log-write",
        common.json_document(
            {
                "Version": "1",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["log:PostLogStoreLogs"],
                        "Resource": [
                            pulumi.Output.concat(
                                "acs:log:",
                                region,
                                ":*:project/",
                                project.project_name,
                                "/logstore/",
                                store.logstore_name,
                            )
                        ],
                    }
                ],
            }
        ),
        opts,
    )
    alicloud.ram.UserPolicyAttachment(
        f"{prefix}-log-write", user_name=writer.name, **_attached(policy), opts=opts
    )
    key = alicloud.ram.AccessKey(f"{prefix}-log-agent", user_name=writer.name, opts=opts)
    # SLS's Kafka-compatible endpoint: topic = logstore, SASL user = project.
    sink = common.kafka_log_sink(
        "sls",
        brokers=pulumi.Output.concat(project.project_name, f".{region}-intranet.log.aliyuncs.com:10011"),
        topic=store.logstore_name,
        username=project.project_name,
        key_id=key.id,
        key_secret=key.secret,
        security_protocol="sasl_ssl",
    )
    return sink, {"logProject": project.project_name, "logStore": store.logstore_name}


def load_balancer_annotations(cloud: AlicloudConfig) -> dict[str, str]:
    """A CLB billed by capacity units, on the intranet (in the given vSwitch) or the internet."""
    annotations = {
        f"{LB_ANNOTATION}address-type": cloud.load_balancer_address_type,
        f"{LB_ANNOTATION}instance-charge-type": "PayByCLCU",
    }
    if cloud.load_balancer_address_type == "intranet" and cloud.load_balancer_vswitch_id:
        annotations[f"{LB_ANNOTATION}vswitch-id"] = cloud.load_balancer_vswitch_id
    return annotations


def model_sync(
    config: StackConfig, cloud: AlicloudConfig, cluster: Cluster, bucket: ModelBucket, context: CloudContext
) -> ModelSync:
    assert cluster.oidc is not None, "ACK clusters here always have RRSA"
    reader = _model_reader(config, cluster.oidc, bucket.name, context.opts)

    def copy_command(prefix: str, directory: str) -> list[str]:
        # ossutil 2 takes the RRSA role from the variables the pod identity webhook injects.
        return [
            "ossutil", "cp", "--recursive", "--update", "--region", cloud.region,
            "--endpoint", f"oss-{cloud.region}-internal.aliyuncs.com",
            f"oss://{bucket.name}/{prefix}/", f"{directory}/",
        ]

    return ModelSync(
        image=cloud.model_sync_image,
        bucket=bucket.name,
        copy_command=copy_command,
        service_account_annotations={"pod-identity.alibabacloud.com/role-name": reader.role_name},
    )


def platform(
    config: StackConfig, cloud: AlicloudConfig, cluster: Cluster, context: CloudContext
) -> CloudPlatform:
    """ACK installs the GPU device plugin on GPU pools itself; node autoscaling is the cluster's own
    autoscaler, switched on here, which scales the GPU pool (its scaling_config) on pending pods."""
    if config.platform.installs("node_autoscaler", cluster.created):
        alicloud.cs.AutoscalingConfig(
            f"{config.name}-autoscaling",
            cluster_id=cluster.id,
            scaler_type="cluster-autoscaler",
            scale_up_from_zero=True,
            scale_down_enabled=True,
            # A GPU node holds one model replica: idle below half its GPU, it may go after the quiet period.
            gpu_utilization_threshold="0.5",
            unneeded_duration="10m",
            opts=context.opts,
        )
    return CloudPlatform(load_balancer_annotations=load_balancer_annotations(cloud))


def _section(config: StackConfig) -> AlicloudConfig:
    assert config.alicloud is not None, "StackConfig checks that the alicloud section is present"
    return config.alicloud


ALICLOUD = common.ManagedCloud[AlicloudConfig](
    section=_section,
    provider=lambda config, cloud: alicloud.Provider(f"{config.name}-alicloud", region=cloud.region),
    storage=ESSD_STORAGE_CLASS,
    create_cluster=create_cluster,
    existing_cluster=existing_cluster,
    model_bucket=model_bucket,
    model_sync=model_sync,
    log_sink=log_sink,
    load_balancer_annotations=load_balancer_annotations,
    platform=platform,
    namespace_labels=lambda sync: {"pod-identity.alibabacloud.com/injection": "on"} if sync else {},
)


def build_target(config: StackConfig) -> CloudTarget:
    return common.build_target(config, ALICLOUD)
