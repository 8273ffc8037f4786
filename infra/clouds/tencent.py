"""Tencent Cloud: TKE (a managed cluster with a GPU node pool, or existing), a COS model bucket,
CBS premium volumes, an internal or public CLB, and a CLS logset and topic.

The model-sync step reads COS through its S3-compatible API with the key of a CAM user allowed to
read only the model prefix; the key is a Pulumi secret and reaches the pod as a file in a
Kubernetes Secret. CLS takes logs from fluent-bit over its Kafka-compatible endpoint with the key
of a second CAM user allowed to write to one topic.
"""

from __future__ import annotations

import pulumi
import tencentcloud_iac_pulumi as tencentcloud

from infra.clouds import common
from infra.clouds.base import CloudPlatform, CloudTarget, LogSink, ModelSync
from infra.clouds.common import CloudContext, Cluster, ModelBucket
from infra.config import StackConfig, TencentClusterCreate, TencentConfig

CBS_STORAGE_CLASS = common.StorageClassSpec(
    name="cbs-premium", provisioner="com.tencent.cloud.csi.cbs", parameters={"diskType": "CLOUD_PREMIUM"}
)
MAX_LOG_RETENTION_DAYS = 3600
INTERNAL_SUBNET_ANNOTATION = "service.kubernetes.io/qcloud-loadbalancer-internal-subnetid"
CREDENTIALS_FILE = "credentials"
# TKE's add-on that enforces NetworkPolicy (the VPC-CNI and global-router networks do not by themselves).
NETWORK_POLICY_ADDON = "networkpolicy"


def _node_pool(
    config: StackConfig,
    spec: TencentClusterCreate,
    cluster: tencentcloud.kubernetes.Cluster,
    role: str,
    pool: dict[str, object],
    opts: pulumi.ResourceOptions,
) -> tencentcloud.kubernetes.NodePool:
    return tencentcloud.kubernetes.NodePool(
        f"{config.name}-{role}",
        cluster_id=cluster.id,
        name=role,
        vpc_id=spec.vpc_id,
        subnet_ids=spec.subnet_ids,
        opts=opts,
        **pool,
    )


def create_cluster(config: StackConfig, cloud: TencentConfig, context: CloudContext) -> Cluster:
    spec = cloud.cluster
    assert spec is not None
    opts = context.opts
    # The endpoint is opened by its own resource once nodes exist (the provider's documented way): the
    # cluster's own `cluster_internet` without `worker_config` never opens it.
    cluster = tencentcloud.kubernetes.Cluster(
        f"{config.name}-tke",
        vpc_id=spec.vpc_id,
        cluster_name=f"{config.name}-{config.stack}",
        cluster_version=spec.version,
        cluster_deploy_type="MANAGED_CLUSTER",
        cluster_cidr=spec.cluster_cidr,
        container_runtime="containerd",
        deletion_protection=True,
        opts=opts,
    )

    def scaling(instance_type: str, disk_gb: int) -> tencentcloud.kubernetes.NodePoolAutoScalingConfigArgs:
        return tencentcloud.kubernetes.NodePoolAutoScalingConfigArgs(
            instance_type=instance_type,
            system_disk_type="CLOUD_SSD",
            system_disk_size=disk_gb,
            orderly_security_group_ids=spec.security_group_ids,
        )

    system = spec.system_node_pool
    system_pool = _node_pool(
        config,
        spec,
        cluster,
        "system",
        {
            "min_size": system.size,
            "max_size": system.size,
            "desired_capacity": system.size,
            "auto_scaling_config": scaling(system.instance_type, 100),
        },
        opts,
    )
    gpu = spec.node_pool
    gpu_pool = _node_pool(
        config,
        spec,
        cluster,
        "gpu",
        {
            "min_size": gpu.min_size,
            "max_size": gpu.max_size,
            "desired_capacity": gpu.desired_size,
            # TKE's cluster autoscaler scales the pool between its bounds on pending pods.
            "enable_auto_scale": config.platform.installs("node_autoscaler", True),
            "auto_scaling_config": scaling(gpu.instance_type, gpu.disk_size_gb),
            "node_config": tencentcloud.kubernetes.NodePoolNodeConfigArgs(
                gpu_args=tencentcloud.kubernetes.NodePoolNodeConfigGpuArgsArgs(driver=gpu.gpu_driver)
            ) if gpu.gpu_driver else None,
            "labels": dict([common.GPU_POOL_LABEL]),
            "taints": [
                tencentcloud.kubernetes.NodePoolTaintArgs(
                    key=common.GPU_TAINT.key, value=common.GPU_TAINT.value, effect=common.GPU_TAINT.effect
                )
            ],
        },
        opts,
    )
    public_api = spec.api_public_security_group_id is not None
    endpoint = tencentcloud.kubernetes.ClusterEndpoint(
        f"{config.name}-tke-endpoint",
        cluster_id=cluster.id,
        cluster_internet=public_api,
        cluster_internet_security_group=spec.api_public_security_group_id,
        cluster_intranet=True,
        cluster_intranet_subnet_id=spec.subnet_ids[0],
        opts=context.after(system_pool, gpu_pool),
    )
    network_policy = tencentcloud.kubernetes.Addon(
        f"{config.name}-networkpolicy", cluster_id=cluster.id, addon_name=NETWORK_POLICY_ADDON,
        opts=context.after(system_pool),
    )
    return Cluster(
        id=cluster.id,
        kubeconfig=pulumi.Output.secret(
            endpoint.kube_config if public_api else endpoint.kube_config_intranet
        ),
        created=True,
        dependencies=(system_pool, gpu_pool, endpoint, network_policy),
    )


def existing_cluster(config: StackConfig, cloud: TencentConfig, context: CloudContext) -> Cluster:
    assert cloud.existing_cluster is not None
    cluster_id = cloud.existing_cluster.name

    def issued() -> pulumi.Output[str]:
        found = tencentcloud.kubernetes.get_clusters_output(cluster_id=cluster_id, opts=context.invoke)
        return found.lists.apply(lambda clusters: clusters[0].kube_config)

    return Cluster(id=cluster_id, kubeconfig=common.kubeconfig(config, issued), created=False)


def cos_bucket_name(config: StackConfig, cloud: TencentConfig) -> str:
    """COS bucket names end in the account's APPID."""
    return f"{common.bucket_name(config, cloud.bucket.name)}-{cloud.app_id}"


def model_bucket(config: StackConfig, cloud: TencentConfig, context: CloudContext) -> ModelBucket:
    """A private bucket: private ACL and no bucket policy (so no public access), SSE-COS, versioned."""
    bucket = tencentcloud.cos.Bucket(
        f"{config.name}-models",
        bucket=cos_bucket_name(config, cloud),
        acl="private",
        encryption_algorithm="AES256",
        versioning_enable=True,
        opts=context.opts,
    )
    return ModelBucket(name=cos_bucket_name(config, cloud), outputs={"modelBucket": bucket.bucket})


def model_read_policy(config: StackConfig, cloud: TencentConfig) -> pulumi.Output[str]:
    """List the bucket and read objects under the model's (and its adapters') prefixes; nothing else."""
    bucket = f"qcs::cos:{cloud.region}:uid/{cloud.app_id}:{cos_bucket_name(config, cloud)}"
    return common.json_document(
        {
            "version": "2.0",
            "statement": [
                {"effect": "allow", "action": ["name/cos:GetBucket"], "resource": [f"{bucket}/*"]},
                {
                    "effect": "allow",
                    "action": ["name/cos:GetObject", "name/cos:HeadObject"],
                    "resource": [f"{bucket}/{prefix}/*" for prefix in common.model_prefixes(config)],
                },
            ],
        }
    )


def _api_user(
    config: StackConfig, role: str, document: pulumi.Input[str], remark: str, opts: pulumi.ResourceOptions
) -> tencentcloud.cam.AccessKey:
    """A CAM user for API calls only, holding one policy; its key is a Pulumi secret."""
    name = f"{config.name}-{config.stack}-{role}"
    user = tencentcloud.cam.User(
        f"{config.name}-{role}",
        name=name,
        use_api=True,
        console_login=False,
        remark=remark,
        force_delete=True,
        opts=opts,
    )
    policy = tencentcloud.cam.Policy(f"{config.name}-{role}", name=name, document=document, opts=opts)
    tencentcloud.cam.UserPolicyAttachment(
        f"{config.name}-{role}", user_name=user.name, policy_id=policy.id, opts=opts
    )
    return tencentcloud.cam.AccessKey(
        f"{config.name}-{role}",
        target_uin=user.uin,
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["secret_access_key"])
        ),
    )


def model_sync(
    config: StackConfig, cloud: TencentConfig, cluster: Cluster, bucket: ModelBucket, context: CloudContext
) -> ModelSync:
    """TKE has no workload identity for COS here: a CAM user's key, read-only on the model's prefixes."""
    key = _api_user(
        config, "model-sync", model_read_policy(config, cloud), "reads the model weights", context.opts
    )
    credentials = pulumi.Output.secret(
        pulumi.Output.format(
            "[default]\naws_access_key_id = {0}\naws_secret_access_key = {1}\n",
            key.access_key,
            key.secret_access_key,
        )
    )
    return ModelSync(
        image=cloud.model_sync_image,
        bucket=bucket.name,
        copy_command=common.s3_sync(bucket.name, endpoint_url=f"https://cos.{cloud.region}.myqcloud.com"),
        env={
            "AWS_DEFAULT_REGION": cloud.region,
            "AWS_SHARED_CREDENTIALS_FILE": f"{ModelSync.SECRET_FILES_DIR}/{CREDENTIALS_FILE}",
        },
        secret_files={CREDENTIALS_FILE: credentials},
    )


def log_sink(
    config: StackConfig, cloud: TencentConfig, cluster: Cluster, context: CloudContext
) -> tuple[LogSink, dict[str, pulumi.Input[str]]]:
    opts = context.opts
    retention = common.require_retention_up_to(config, MAX_LOG_RETENTION_DAYS)
    logset = tencentcloud.cls.Logset(
        f"{config.name}-logs", logset_name=f"{config.name}-{config.stack}", opts=opts
    )
    topic = tencentcloud.cls.Topic(
        f"{config.name}-logs",
        logset_id=logset.id,
        topic_name="server",
        period=retention,
        partition_count=1,
        auto_split=True,
        max_split_partitions=10,
        storage_type="hot",
        opts=opts,
    )
    key = _api_user(
        config,
        "log-agent",
        common.json_document(
            {
                "version": "2.0",
                "statement": [
                    {
                        "effect": "allow",
                        "action": ["name/cls:ProducerLog", "name/cls:UploadLog"],
                        "resource": [pulumi.Output.concat(f"qcs::cls:{cloud.region}:uin/*:topic/", topic.id)],
                    }
                ],
            }
        ),
        "fluent-bit: writes to one CLS topic",
        opts,
    )
    # CLS's Kafka-compatible endpoint (intranet): topic = topic id, SASL user = logset id.
    sink = common.kafka_log_sink(
        "cls",
        brokers=f"{cloud.region}-producer.cls.tencentyun.com:9095",
        topic=topic.id,
        username=logset.id,
        key_id=key.access_key,
        key_secret=key.secret_access_key,
        security_protocol="sasl_plaintext",
    )
    return sink, {"logTopic": topic.id}


def load_balancer_annotations(cloud: TencentConfig) -> dict[str, str]:
    """A CLB in the given subnet (internal) or, without one, on the internet."""
    subnet = cloud.load_balancer_internal_subnet_id
    return {INTERNAL_SUBNET_ANNOTATION: subnet} if subnet else {}


def platform(
    config: StackConfig, cloud: TencentConfig, cluster: Cluster, context: CloudContext
) -> CloudPlatform:
    """The device plugin comes from the platform layer; node autoscaling is the GPU pool's own
    (`enable_auto_scale`), NetworkPolicy enforcement TKE's add-on (both with the cluster)."""
    return CloudPlatform(needs_device_plugin=True, load_balancer_annotations=load_balancer_annotations(cloud))


def _section(config: StackConfig) -> TencentConfig:
    assert config.tencent is not None, "StackConfig checks that the tencent section is present"
    return config.tencent


TENCENT = common.ManagedCloud[TencentConfig](
    section=_section,
    provider=lambda config, cloud: tencentcloud.Provider(f"{config.name}-tencent", region=cloud.region),
    storage=CBS_STORAGE_CLASS,
    create_cluster=create_cluster,
    existing_cluster=existing_cluster,
    model_bucket=model_bucket,
    model_sync=model_sync,
    log_sink=log_sink,
    load_balancer_annotations=load_balancer_annotations,
    platform=platform,
)


def build_target(config: StackConfig) -> CloudTarget:
    return common.build_target(config, TENCENT)
