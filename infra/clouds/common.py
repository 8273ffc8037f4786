"""What the three managed clouds share: the GPU pool's taint and label, the identities' subjects,
the cluster's Kubernetes provider, the model volume's StorageClass, the Kafka-compatible log sink,
and the CloudTarget a managed cluster hands over.

The GPU node pool each cloud creates carries GPU_TAINT and GPU_POOL_LABEL; the CloudTarget hands
the workload the matching toleration and nodeSelector from the same two constants, so the two can
never drift apart. An existing cluster's GPU nodes must carry the same taint and label.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pulumi
import pulumi_kubernetes as k8s

from infra.clouds.base import CloudPlatform, CloudTarget, LogSink, ModelSync
from infra.components.naming import App
from infra.config import PROJECT, CloudSection, ConfigError, StackConfig, stack_file


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # Kubernetes spelling; each cloud maps it to its API's spelling


GPU_TAINT = Taint(key="nvidia.com/gpu", value="present", effect="NoSchedule")
GPU_POOL_LABEL = ("node.llm-serving.io/pool", "gpu")


def gpu_node_selector(config: StackConfig) -> dict[str, str]:
    return dict([GPU_POOL_LABEL]) if config.gpu.count > 0 else {}


def gpu_tolerations(config: StackConfig) -> list[dict[str, str]]:
    if config.gpu.count == 0:
        return []
    return [{"key": GPU_TAINT.key, "operator": "Equal", "value": GPU_TAINT.value, "effect": GPU_TAINT.effect}]


def model_sync_service_account(config: StackConfig) -> str:
    """The service account of the pods whose init step syncs the model: the only identity that may
    read the bucket."""
    return App.from_config(config).service_account


def log_agent_service_account(config: StackConfig) -> str:
    """The service account of the logging agent: the only identity that may write to the log sink."""
    return f"{config.name}-log-agent"


def log_agent_namespace(config: StackConfig) -> str:
    """The logging agent's own namespace: it mounts node paths, which the app's namespace forbids."""
    return f"{config.namespace}-logging"


def service_account_subject(namespace: str, service_account: str) -> str:
    """The `sub` claim of a projected service account token, which cloud trust policies match."""
    return f"system:serviceaccount:{namespace}:{service_account}"


def bucket_name(config: StackConfig, configured: str | None) -> str:
    return configured or f"{config.name}-{config.stack}-models"


def uses_bucket(config: StackConfig) -> bool:
    return config.model.source == "bucket"


def model_prefix(config: StackConfig) -> str:
    return config.model.bucket_prefix.strip("/")


def s3_sync(bucket: str, endpoint_url: str | None = None) -> Callable[[str, str], list[str]]:
    """The AWS CLI's `s3 sync` of a prefix of `bucket` into a directory; `endpoint_url` for an
    S3-compatible store."""
    endpoint = ["--endpoint-url", endpoint_url] if endpoint_url else []

    def command(prefix: str, directory: str) -> list[str]:
        return ["aws", "s3", "sync", "--only-show-errors", "--no-progress", *endpoint,
                f"s3://{bucket}/{prefix}", directory]

    return command


def model_prefixes(config: StackConfig) -> list[str]:
    """Every prefix of the bucket the model sync reads: the base model and each LoRA adapter."""
    return [model_prefix(config), *(a.bucket_prefix.strip("/") for a in config.model.lora_adapters)]


def prefix_patterns(prefixes: list[str]) -> list[str]:
    """Each prefix and everything below it, as the clouds' list conditions spell it."""
    return [pattern for prefix in prefixes for pattern in (prefix, f"{prefix}/*")]


def require_retention(config: StackConfig, allowed: Callable[[int], bool], what: str) -> int:
    """The log retention, if the cloud's log service accepts it; else stop naming the key."""
    days = config.logging.retention_days
    if not allowed(days):
        raise ConfigError(
            stack_file(config.stack),
            [
                (
                    f"{PROJECT}:logging.retentionDays",
                    f"{days} is not accepted by {config.cloud}; allowed: {what}",
                )
            ],
        )
    return days


def require_retention_up_to(config: StackConfig, max_days: int) -> int:
    """The log retention, for a log service that keeps logs from 1 to `max_days` days."""
    return require_retention(config, lambda days: 1 <= days <= max_days, f"1 to {max_days} days")


def kubeconfig(config: StackConfig, from_cloud: Callable[[], pulumi.Input[str]]) -> pulumi.Output[str]:
    """The secret `kubeconfig` when the stack gives one, else the one the cloud issues; always secret."""
    given = config.secrets.get("kubeconfig")
    return pulumi.Output.secret(given if given is not None else from_cloud())


def kubernetes_provider(
    config: StackConfig, config_file: pulumi.Input[str], depends_on: Sequence[pulumi.Resource] = ()
) -> k8s.Provider:
    """The cluster's provider; it waits for the node pools and add-ons, and so does every object on it."""
    return k8s.Provider(
        f"{config.name}-{config.cloud}",
        kubeconfig=config_file,
        # Objects without a namespace would land in `default`: every object here names its own.
        namespace=config.namespace,
        opts=pulumi.ResourceOptions(depends_on=list(depends_on)),
    )


def json_document(document: Mapping[str, object]) -> pulumi.Output[str]:
    """A policy document that may hold Outputs (ARNs, names), as a JSON string Output."""
    return pulumi.Output.from_input(document).apply(lambda resolved: json.dumps(resolved, sort_keys=True))


@dataclass(frozen=True)
class StorageClassSpec:
    """The cloud's block storage for the model volume: its CSI provisioner and that driver's parameters."""

    name: str
    provisioner: str
    parameters: Mapping[str, str]


def storage_class(config: StackConfig, spec: StorageClassSpec, provider: k8s.Provider) -> str:
    """Declare the model volume's StorageClass (encrypted, expandable, bound where the pod lands).

    Model volumes are a cache of the bucket, made per pod: `Delete`, so that each volume goes with its
    pod instead of leaking a disk per restart."""
    k8s.storage.v1.StorageClass(
        f"{config.name}-{spec.name}",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=spec.name,
            labels={
                "app.kubernetes.io/name": config.name,
                "app.kubernetes.io/part-of": PROJECT,
                "app.kubernetes.io/component": "storage",
                "app.kubernetes.io/managed-by": "pulumi",
            },
        ),
        provisioner=spec.provisioner,
        parameters=dict(spec.parameters),
        reclaim_policy="Delete",
        allow_volume_expansion=True,
        volume_binding_mode="WaitForFirstConsumer",
        opts=pulumi.ResourceOptions(provider=provider),
    )
    return spec.name


def kafka_log_sink(
    kind: str,
    brokers: pulumi.Input[str],
    topic: pulumi.Input[str],
    username: pulumi.Input[str],
    key_id: pulumi.Input[str],
    key_secret: pulumi.Input[str],
    security_protocol: str,
) -> LogSink:
    """fluent-bit's kafka output to a log service's Kafka-compatible endpoint: SASL PLAIN with the
    password `key id#key secret`, which the component keeps in a Secret."""
    return LogSink(
        kind=kind,
        outputs={
            "Name": "kafka",
            "Brokers": brokers,
            "Topics": topic,
            "Format": "json",
            "rdkafka.security.protocol": security_protocol,
            "rdkafka.sasl.mechanism": "PLAIN",
            "rdkafka.sasl.username": username,
        },
        secret_outputs={
            "rdkafka.sasl.password": pulumi.Output.secret(pulumi.Output.concat(key_id, "#", key_secret))
        },
    )


@dataclass(frozen=True)
class OidcIssuer:
    """The cluster's service account token issuer, as the cloud's IAM knows it (IRSA, RRSA)."""

    url: pulumi.Input[str]  # https://...
    provider_arn: pulumi.Input[str]


@dataclass(frozen=True)
class Cluster:
    """What each cloud's cluster, created or existing, hands the rest of its target."""

    id: pulumi.Input[str]  # EKS cluster name; ACK and TKE cluster id
    kubeconfig: pulumi.Output[str]
    created: bool
    oidc: OidcIssuer | None = None  # None: the cloud has no workload identity (TKE)
    vpc_id: pulumi.Input[str] | None = None
    dependencies: tuple[pulumi.Resource, ...] = ()  # node pools, add-ons: ready before any object


@dataclass(frozen=True)
class ModelBucket:
    name: str
    arn: pulumi.Input[str] = ""  # where the cloud's policies name buckets by ARN (AWS)
    key_arn: pulumi.Input[str] = ""  # its encryption key, where reading needs a grant on it (AWS)
    outputs: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudContext:
    """The cloud provider every cloud resource and look-up of the stack uses."""

    provider: pulumi.ProviderResource

    @property
    def opts(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(provider=self.provider)

    @property
    def invoke(self) -> pulumi.InvokeOptions:
        return pulumi.InvokeOptions(provider=self.provider)

    def after(self, *resources: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(provider=self.provider, depends_on=list(resources))


S = TypeVar("S", bound=CloudSection)


@dataclass(frozen=True)
class ManagedCloud(Generic[S]):
    """One managed cloud's declared shape: every cloud module fills in the same functions, with the same
    signatures, and `build_target` drives them in the same order. What differs per cloud is data."""

    section: Callable[[StackConfig], S]
    provider: Callable[[StackConfig, S], pulumi.ProviderResource]
    storage: StorageClassSpec
    create_cluster: Callable[[StackConfig, S, CloudContext], Cluster]
    existing_cluster: Callable[[StackConfig, S, CloudContext], Cluster]
    model_bucket: Callable[[StackConfig, S, CloudContext], ModelBucket]
    model_sync: Callable[[StackConfig, S, Cluster, ModelBucket, CloudContext], ModelSync]
    log_sink: Callable[[StackConfig, S, Cluster, CloudContext], tuple[LogSink, dict[str, Any]]]
    load_balancer_annotations: Callable[[S], dict[str, str]]
    platform: Callable[[StackConfig, S, Cluster, CloudContext], CloudPlatform]
    namespace_labels: Callable[[ModelSync | None], dict[str, str]] = lambda _: {}


def build_target(config: StackConfig, cloud: ManagedCloud[Any]) -> CloudTarget:
    """The target of a managed cluster: its own Kubernetes provider, the cloud's StorageClass, the load
    balancer annotations, the GPU pool's nodeSelector and tolerations, and the cloud's platform pieces."""
    section = cloud.section(config)
    context = CloudContext(cloud.provider(config, section))
    create = section.cluster is not None
    cluster = (cloud.create_cluster if create else cloud.existing_cluster)(config, section, context)
    log_sink, log_outputs = cloud.log_sink(config, section, cluster, context)
    bucket = cloud.model_bucket(config, section, context)
    model_sync = cloud.model_sync(config, section, cluster, bucket, context) if uses_bucket(config) else None
    provider = kubernetes_provider(config, cluster.kubeconfig, cluster.dependencies)
    return CloudTarget(
        kubernetes_provider=provider,
        storage_class=storage_class(config, cloud.storage, provider),
        service_type="LoadBalancer",
        service_annotations=cloud.load_balancer_annotations(section),
        node_selector=gpu_node_selector(config),
        tolerations=gpu_tolerations(config),
        model_sync=model_sync,
        log_sink=log_sink,
        outputs={"cluster": cluster.id, **bucket.outputs, **log_outputs},
        namespace_labels=cloud.namespace_labels(model_sync),
        cluster_created=cluster.created,
        platform=cloud.platform(config, section, cluster, context),
    )
