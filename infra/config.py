"""StackConfig: every key a `Pulumi.<stack>.yaml` may hold under `llm-serving:`, validated up front.

Keys are camelCase in the stack file (`llm-serving:autoscaling: {minReplicas: 2}`) and snake_case in
Python. `load_stack_config()` reads Pulumi's runtime config (the same under `pulumi up` and under the
mock runtime of the offline render), and raises one `ConfigError` naming the stack file, every bad key
and what is allowed, before the program declares a single resource.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.alias_generators import to_camel

from inference.config import ServerConfig
from infra.quantity import Quantity, to_decimal

PROJECT = "llm-serving"
SECRET_ENV_PREFIX = "LLM_SERVING_SECRET_"
# The container port and paths the server listens on; fixed by the server, not by the stack.
SERVER_PORT = 8000
MODEL_MOUNT_PATH = "/models"
MODEL_DIR = f"{MODEL_MOUNT_PATH}/model"


class Section(BaseModel):
    """Base of every config section: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS label; allowed: lower-case letters, digits and '-', "
            "1 to 63 characters, starting and ending with a letter or digit"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]


def _pinned_image(value: str) -> str:
    name, _, digest = value.partition("@")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"{value!r} has a malformed digest; allowed: @sha256:<64 hex digits>")
        return value
    last_segment = name.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        raise ValueError(
            f"{value!r} has no tag; allowed: a pinned tag (repo:1.2.3) or a digest (repo@sha256:...)"
        )
    if last_segment.rsplit(":", 1)[1] == "latest":
        raise ValueError(f"{value!r} uses the moving tag 'latest'; allowed: a pinned tag or a digest")
    return value


PinnedImage = Annotated[str, AfterValidator(_pinned_image)]


def _nginx_size(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]?", value):
        raise ValueError(
            f"{value!r} is not a size; allowed: a positive number with optional k, m or g, e.g. '10m'"
        )
    return value


NginxSize = Annotated[str, AfterValidator(_nginx_size)]


class RegistryConfig(Section):
    """A private image registry; its password is the secret `registryPassword`."""

    server: str
    username: str


class ModelConfig(Section):
    source: Literal["demo", "bucket", "volume"] = Field(
        "bucket",
        description="demo: the server makes a tiny random model; bucket: an init container syncs the "
        "weights from the cloud's model bucket into the volume; volume: the volume is filled otherwise.",
    )
    bucket_prefix: str = Field("models/current", description="Path of the weights inside the bucket.")
    storage_size: Quantity = "100Gi"
    access_mode: Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"] = (
        "ReadWriteOnce"
    )
    load_timeout_seconds: int = Field(
        1800, ge=60, le=86400, description="How long a pod may take to load the model before it is ready."
    )


class GpuConfig(Section):
    count: int = Field(1, ge=0, le=16, description="GPUs per pod; 0 runs on CPU.")
    type: str | None = Field(
        None, description="GPU product label value (nvidia.com/gpu.product) the pods must land on."
    )
    resource_name: str = "nvidia.com/gpu"


class ComputeResources(Section):
    cpu: Quantity
    memory: Quantity


class ResourcesConfig(Section):
    requests: ComputeResources = ComputeResources(cpu="4", memory="16Gi")
    limits: ComputeResources = ComputeResources(cpu="8", memory="32Gi")
    shm_size: Quantity = Field("8Gi", description="Memory-backed /dev/shm for tensor sharing.")
    cache_size: Quantity = Field("20Gi", description="Writable cache emptyDir (compile caches, demo model).")
    tmp_size: Quantity = "1Gi"


class ScalingPolicy(Section):
    stabilization_window_seconds: int = Field(ge=0, le=3600)
    pods: int = Field(ge=1, description="Pods added or removed per period at most.")
    period_seconds: int = Field(ge=1, le=1800)


class AutoscalingConfig(Section):
    enabled: bool = True
    min_replicas: int = Field(2, ge=1)
    max_replicas: int = Field(10, ge=1)
    cpu_utilization: int = Field(70, ge=1, le=100, description="Target average CPU, percent of requests.")
    memory_utilization: int = Field(
        80, ge=1, le=100, description="Target average memory, percent of requests."
    )
    requests_waiting_per_pod: float = Field(
        4, gt=0, description="Target of the server's llm_requests_waiting per pod (via a metrics adapter)."
    )
    # A model takes minutes to load, so add fast but remove slowly.
    scale_up: ScalingPolicy = ScalingPolicy(stabilization_window_seconds=60, pods=2, period_seconds=60)
    scale_down: ScalingPolicy = ScalingPolicy(stabilization_window_seconds=600, pods=1, period_seconds=300)


class TlsConfig(Section):
    enabled: bool = True
    cluster_issuer: str = Field("letsencrypt-prod", min_length=1, description="cert-manager ClusterIssuer.")
    secret_name: DnsLabel | None = Field(None, description="Certificate Secret; defaults to <name>-tls.")


class IngressConfig(Section):
    enabled: bool = True
    host: str | None = None
    class_name: str = "nginx"
    tls: TlsConfig = TlsConfig()
    # Streams of generated tokens stay open as long as generation runs.
    proxy_timeout_seconds: int = Field(3600, ge=30, le=86400)
    max_body_size: NginxSize = "10m"


class NetworkConfig(Section):
    ingress_controller_namespace: DnsLabel = "ingress-nginx"
    prometheus_namespace: DnsLabel = "monitoring"


class QuotaConfig(Section):
    enabled: bool = True
    requests_cpu: Quantity = "64"
    requests_memory: Quantity = "512Gi"
    limits_cpu: Quantity = "128"
    limits_memory: Quantity = "1Ti"
    gpus: int = Field(16, ge=0)
    pods: int = Field(40, ge=1)
    storage: Quantity = "2Ti"


class LimitRangeConfig(Section):
    """Defaults for containers that state no resources (the workload itself always states them)."""

    default_cpu: Quantity = "500m"
    default_memory: Quantity = "512Mi"
    default_request_cpu: Quantity = "100m"
    default_request_memory: Quantity = "128Mi"


PrometheusDuration = Annotated[str, Field(pattern=r"^[1-9][0-9]*(s|m|h)$")]


class AlertThresholds(Section):
    """When each generated alert fires; ratios are fractions (0.1 is 10%)."""

    error_rate: float = Field(0.1, gt=0, le=1, description="5xx share of API requests.")
    p95_latency_seconds: float = Field(2.0, gt=0, description="p95 of API request latency.")
    ttft_p95_seconds: float = Field(1.0, gt=0, description="Objective for p95 time to first token.")
    device_memory_ratio: float = Field(0.9, gt=0, le=1)
    kv_cache_usage_ratio: float = Field(0.95, gt=0, le=1)
    requests_waiting: float = Field(32, gt=0, description="Requests queued per pod.")
    sustained_for: PrometheusDuration = Field("5m", description="How long a breach lasts before it alerts.")
    outage_for: PrometheusDuration = Field("2m", description="How long no replica is ready before it alerts.")


class MonitoringConfig(Section):
    enabled: bool = True
    mode: Literal["operator", "scrape-config"] = Field(
        "operator", description="operator: ServiceMonitor + PrometheusRule; scrape-config: a plain ConfigMap."
    )
    scrape_interval_seconds: int = Field(15, ge=1, le=300)
    alerts: AlertThresholds = AlertThresholds()
    operator_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels the Prometheus resource selects ServiceMonitors and PrometheusRules by, "
        "e.g. {release: kube-prometheus-stack}.",
    )
    dashboard_namespace: DnsLabel | None = Field(
        None, description="Namespace Grafana's dashboard sidecar watches; none: the app's namespace."
    )
    prometheus_service_account: DnsLabel = Field(
        "prometheus",
        description="scrape-config mode: service account of the Prometheus in network.prometheusNamespace; "
        "it may discover the server's pods.",
    )


class ElasticsearchConfig(Section):
    host: str = "elasticsearch.logging.svc.cluster.local"
    port: int = Field(9200, ge=1, le=65535)
    index: str = "llm-serving"


class LoggingConfig(Section):
    enabled: bool = True
    agent: Literal["fluent-bit"] = "fluent-bit"
    image: PinnedImage = "cr.fluentbit.io/fluent/fluent-bit:3.1.9"
    requests: ComputeResources = ComputeResources(cpu="50m", memory="64Mi")
    limits: ComputeResources = ComputeResources(cpu="500m", memory="256Mi")
    elasticsearch: ElasticsearchConfig = ElasticsearchConfig()
    retention_days: int = Field(30, ge=1, le=3650)


# Cloud sections. Each cloud module reads only its own section.
# GPU instance families each cloud's GPU node pool may use: a typo or a CPU family is caught here, not
# by a failed node pool half an hour into `pulumi up`.
AWS_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en")
ALICLOUD_GPU_FAMILIES = (
    "ecs.gn6i", "ecs.gn6v", "ecs.gn6e", "ecs.gn7", "ecs.gn7i", "ecs.gn7e", "ecs.gn8is", "ecs.gn8v",
    "ecs.ebmgn7e", "ecs.ebmgn8v",
)
TENCENT_GPU_FAMILIES = ("GN6S", "GN7", "GN7vw", "GN8", "GN10X", "GN10Xp", "GT4", "PNV4")


def _family_check(families: tuple[str, ...], separator: str) -> AfterValidator:
    """Validator: the instance type's family (text before `separator`) is one of `families`."""

    def check(instance_type: str) -> str:
        family = instance_type.split(separator, 1)[0]
        if family not in families:
            raise ValueError(
                f"{instance_type!r} is not of a known GPU instance type family ({family!r}); "
                f"allowed families: {', '.join(families)}"
            )
        return instance_type

    return AfterValidator(check)


AwsGpuInstanceType = Annotated[str, _family_check(AWS_GPU_FAMILIES, ".")]
AlicloudGpuInstanceType = Annotated[str, _family_check(ALICLOUD_GPU_FAMILIES, "-")]
TencentGpuInstanceType = Annotated[str, _family_check(TENCENT_GPU_FAMILIES, ".")]


class ExistingCluster(Section):
    """Use a cluster that already exists; its kubeconfig is the secret `kubeconfig` when given,
    otherwise it is read from the cloud."""

    name: str = Field(min_length=1, description="EKS cluster name; ACK or TKE cluster id.")


class AlicloudExistingCluster(ExistingCluster):
    # RRSA of an existing cluster: shown on its Basic Information page once RRSA is enabled.
    rrsa_oidc_provider_arn: str = Field(min_length=1)
    rrsa_oidc_issuer_url: str = Field(min_length=1)


class NodePoolConfig(Section):
    """The GPU node pool: tainted so that only the GPU workload lands on it."""

    instance_type: str
    min_size: int = Field(1, ge=0)
    max_size: int = Field(3, ge=1)
    desired_size: int = Field(1, ge=0)
    disk_size_gb: int = Field(200, ge=20)

    @model_validator(mode="after")
    def _sizes_in_order(self) -> NodePoolConfig:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"sizes out of order (minSize {self.min_size}, desiredSize {self.desired_size}, "
                f"maxSize {self.max_size}); allowed: minSize <= desiredSize <= maxSize"
            )
        return self


class AwsNodePool(NodePoolConfig):
    instance_type: AwsGpuInstanceType


class AlicloudNodePool(NodePoolConfig):
    instance_type: AlicloudGpuInstanceType


class TencentNodePool(NodePoolConfig):
    instance_type: TencentGpuInstanceType


class SystemNodePoolConfig(Section):
    """Untainted nodes for cluster add-ons (DNS, CSI, load balancer controller)."""

    instance_type: str
    size: int = Field(2, ge=1)


class ClusterCreate(Section):
    version: str = "1.33"
    subnet_ids: list[str] = Field(
        min_length=1, description="Subnets (vSwitches on Alibaba Cloud) of the nodes."
    )
    node_pool: NodePoolConfig
    system_node_pool: SystemNodePoolConfig


class AwsClusterCreate(ClusterCreate):
    subnet_ids: list[str] = Field(min_length=2, description="Subnets in at least two availability zones.")
    node_pool: AwsNodePool
    system_node_pool: SystemNodePoolConfig = SystemNodePoolConfig(instance_type="m6i.large")
    api_public_access_cidrs: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed to the public API endpoint; empty: private endpoint only.",
    )


class AlicloudClusterCreate(ClusterCreate):
    version: str | None = Field(None, description="ACK version, e.g. 1.33.1-aliyun.1; none: the latest.")
    node_pool: AlicloudNodePool
    system_node_pool: SystemNodePoolConfig = SystemNodePoolConfig(instance_type="ecs.g7.xlarge")
    cluster_spec: Literal["ack.pro.small", "ack.standard"] = "ack.pro.small"
    pod_cidr: str = "172.20.0.0/16"
    service_cidr: str = "172.21.0.0/20"
    api_public: bool = Field(False, description="Expose the API server on an internet-facing load balancer.")


class TencentClusterCreate(ClusterCreate):
    version: str = "1.32.2"
    vpc_id: str = Field(min_length=1)
    node_pool: TencentNodePool
    system_node_pool: SystemNodePoolConfig = SystemNodePoolConfig(instance_type="S5.LARGE8")
    cluster_cidr: str = Field("172.18.0.0/16", description="Pod CIDR of the global router network.")
    security_group_ids: list[str] = Field(min_length=1, description="Security groups of the nodes.")
    api_public_security_group_id: str | None = Field(
        None, description="Set: expose the API server on the internet, limited by this security group."
    )


class BucketConfig(Section):
    name: str | None = Field(
        None, description="Name of the model bucket to create; none: derived from the stack."
    )


class CloudSection(Section):
    """Keys every cloud shares. Exactly one of `existingCluster` and `cluster` must be set."""

    region: str = Field(min_length=1)
    existing_cluster: ExistingCluster | None = None
    cluster: ClusterCreate | None = None
    bucket: BucketConfig = BucketConfig()

    @model_validator(mode="after")
    def _one_cluster_source(self) -> CloudSection:
        if (self.existing_cluster is None) == (self.cluster is None):
            state = "both are set" if self.cluster else "neither is set"
            raise ValueError(
                f"{state}; allowed: exactly one of existingCluster (use a cluster) or cluster (create one)"
            )
        return self


class AwsConfig(CloudSection):
    cluster: AwsClusterCreate | None = None
    load_balancer_scheme: Literal["internal", "internet-facing"] = "internal"
    model_sync_image: PinnedImage = "public.ecr.aws/aws-cli/aws-cli:2.22.0"


class AlicloudConfig(CloudSection):
    existing_cluster: AlicloudExistingCluster | None = None
    cluster: AlicloudClusterCreate | None = None
    load_balancer_address_type: Literal["intranet", "internet"] = "intranet"
    load_balancer_vswitch_id: str | None = Field(None, description="vSwitch of an intranet load balancer.")
    model_sync_image: PinnedImage = Field(
        description="Image with ossutil 2 (it reads the RRSA credentials the pod identity webhook injects)."
    )


class TencentConfig(CloudSection):
    app_id: str = Field(
        pattern=r"^[0-9]{5,12}$", description="Account APPID: suffix of every COS bucket name."
    )
    cluster: TencentClusterCreate | None = None
    load_balancer_internal_subnet_id: str | None = Field(
        None, description="Set: internal CLB in that subnet."
    )
    model_sync_image: PinnedImage = "public.ecr.aws/aws-cli/aws-cli:2.22.0"


# Server settings the stack may set. The rest are owned by the deployment: where it listens, where
# the model and the API key are mounted.
DEPLOYMENT_OWNED_SERVER_FIELDS = frozenset({"host", "port", "model_path", "api_key", "api_key_file"})

ServerSettings: type[Section] = create_model(  # type: ignore[call-overload]
    "ServerSettings",
    __base__=Section,
    **{
        name: (info.annotation, info)
        for name, info in ServerConfig.model_fields.items()
        if name not in DEPLOYMENT_OWNED_SERVER_FIELDS
    },
)


@dataclass(frozen=True)
class SecretKey:
    description: str
    required: bool = False


# Config keys that must be Pulumi secrets (`pulumi config set --secret <key>`).
SECRET_KEYS: dict[str, SecretKey] = {
    "apiKey": SecretKey("bearer token clients send to the API", required=True),
    "registryPassword": SecretKey("password of the private image registry (with `registry`)"),
    "kubeconfig": SecretKey("kubeconfig of an existing cluster"),
}


@dataclass(frozen=True)
class StackSecrets:
    """Secret config values, as Pulumi secret Outputs: they never appear in plain text."""

    values: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)

    def get(self, key: str) -> pulumi.Output[str] | None:
        return self.values.get(key)


class StackConfig(Section):
    cloud: Literal["local", "aws", "alicloud", "tencent"] = "local"
    name: DnsLabel = Field("llm-serving", description="App name: prefix of every object name.")
    namespace: DnsLabel = "llm-serving"
    image: PinnedImage
    # Always: a tag can be pushed again, and a pull of an unchanged image only checks its manifest.
    image_pull_policy: Literal["IfNotPresent", "Always"] = "Always"
    registry: RegistryConfig | None = None
    model: ModelConfig = ModelConfig()
    gpu: GpuConfig = GpuConfig()
    resources: ResourcesConfig = ResourcesConfig()
    replicas: int = Field(2, ge=1, description="Pods when autoscaling is off.")
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    ingress: IngressConfig = IngressConfig()
    network: NetworkConfig = NetworkConfig()
    quota: QuotaConfig = QuotaConfig()
    limit_range: LimitRangeConfig = LimitRangeConfig()
    server: ServerSettings = ServerSettings()  # type: ignore[valid-type]
    monitoring: MonitoringConfig = MonitoringConfig()
    logging: LoggingConfig = LoggingConfig()
    aws: AwsConfig | None = None
    alicloud: AlicloudConfig | None = None
    tencent: TencentConfig | None = None

    _stack: str = PrivateAttr("")
    _secrets: StackSecrets = PrivateAttr(default_factory=StackSecrets)

    @property
    def stack(self) -> str:
        return self._stack

    @property
    def secrets(self) -> StackSecrets:
        return self._secrets

    @property
    def api_key(self) -> pulumi.Output[str]:
        return self._secrets.values["apiKey"]

    @property
    def max_pods(self) -> int:
        """Pods of the workload at most: the autoscaling ceiling (or replicas) plus a rolling-update surge."""
        return (self.autoscaling.max_replicas if self.autoscaling.enabled else self.replicas) + 1


def secret_env_name(key: str) -> str:
    """Where the offline render takes a secret from: apiKey -> LLM_SERVING_SECRET_API_KEY."""
    return SECRET_ENV_PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


def stack_file(stack: str) -> str:
    return f"Pulumi.{stack}.yaml"


class ConfigError(pulumi.RunError):
    """A stack file is wrong. RunError makes Pulumi print the message alone, without a traceback."""

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}: {key}: {problem}" for key, problem in problems]
        super().__init__("invalid stack configuration\n" + "\n".join(lines))


def _key(loc: tuple[str | int, ...]) -> str:
    head, *rest = loc
    return f"{PROJECT}:{head}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def _section_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The config class holding the key at `loc`, to list what keys it allows."""
    model: type[BaseModel] = StackConfig
    for part in loc:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        info = fields.get(str(part))
        if info is None:
            return None
        candidates = [a for a in getattr(info.annotation, "__args__", (info.annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _problem(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        section = _section_at(tuple(error["loc"][:-1]))
        allowed = sorted(i.alias or n for n, i in section.model_fields.items()) if section else []
        return "unknown key; allowed keys: " + ", ".join(allowed)
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{message} (got {error['input']!r})"


def _cross_checks(config: StackConfig) -> list[tuple[str, str]]:
    """Rules that span keys; each problem names the key to change."""
    problems: list[tuple[str, str]] = []
    scaling = config.autoscaling
    if scaling.enabled and scaling.min_replicas > scaling.max_replicas:
        problems.append((_key(("autoscaling", "minReplicas")),
                         f"{scaling.min_replicas} is above autoscaling.maxReplicas ({scaling.max_replicas}); "
                         "allowed: minReplicas <= maxReplicas"))
    if config.cloud != "local" and getattr(config, config.cloud) is None:
        problems.append((_key((config.cloud,)), f"cloud is {config.cloud!r}, so its section is required"))
    if config.cloud == "local" and config.model.source == "bucket":
        problems.append((_key(("model", "source")),
                         "the local cloud has no model bucket; allowed: 'demo' or 'volume'"))
    problems += _model_volume_checks(config)
    if config.ingress.enabled and not config.ingress.host:
        problems.append((_key(("ingress", "host")), "required when ingress.enabled is true"))
    for resource in ("cpu", "memory"):
        requested = getattr(config.resources.requests, resource)
        limit = getattr(config.resources.limits, resource)
        if to_decimal(requested) > to_decimal(limit):
            problems.append((_key(("resources", "requests", resource)),
                             f"{requested} is above resources.limits.{resource} ({limit}); "
                             "allowed: requests <= limits"))
    problems += _quota_checks(config)
    return problems


SHARED_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany")
PER_POD_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod")


def _model_volume_checks(config: StackConfig) -> list[tuple[str, str]]:
    """A shared model volume is mounted by every pod, on any node; a synced one is each pod's own."""
    model = config.model
    if model.source == "volume" and model.access_mode not in SHARED_ACCESS_MODES:
        return [(_key(("model", "accessMode")),
                 f"{model.access_mode} attaches the shared model volume to one node, but up to "
                 f"{config.max_pods} pods (with the rolling-update surge) mount it on any node; allowed: "
                 f"{' or '.join(SHARED_ACCESS_MODES)}, or model.source 'bucket' (a volume per pod)")]
    if model.source == "bucket" and model.access_mode not in PER_POD_ACCESS_MODES:
        return [(_key(("model", "accessMode")),
                 f"with model.source 'bucket' each pod syncs into a volume of its own; allowed: "
                 f"{' or '.join(PER_POD_ACCESS_MODES)}")]
    return []


def _quota_checks(config: StackConfig) -> list[tuple[str, str]]:
    """The namespace quota must admit the workload at its largest, or pods would be refused."""
    if not config.quota.enabled:
        return []
    pods = config.max_pods
    resources, quota = config.resources, config.quota
    needs = {
        "requestsCpu": (quota.requests_cpu, to_decimal(resources.requests.cpu) * pods),
        "requestsMemory": (quota.requests_memory, to_decimal(resources.requests.memory) * pods),
        "limitsCpu": (quota.limits_cpu, to_decimal(resources.limits.cpu) * pods),
        "limitsMemory": (quota.limits_memory, to_decimal(resources.limits.memory) * pods),
    }
    problems = [
        (_key(("quota", key)), f"{have} is below the {needed} the workload needs at {pods} pods")
        for key, (have, needed) in needs.items()
        if to_decimal(have) < needed
    ]
    if quota.gpus < config.gpu.count * pods:
        problems.append((_key(("quota", "gpus")), f"{quota.gpus} is below the {config.gpu.count * pods} "
                                                  f"GPUs the workload needs at {pods} pods"))
    if config.model.source != "demo":
        claims = pods if config.model.source == "bucket" else 1
        storage = to_decimal(config.model.storage_size) * claims
        if to_decimal(quota.storage) < storage:
            problems.append((_key(("quota", "storage")),
                             f"{quota.storage} is below the {config.model.storage_size} x {claims} model "
                             f"volume(s) the workload claims at {pods} pods"))
    if quota.pods < pods:
        problems.append((_key(("quota", "pods")), f"{quota.pods} is below the {pods} pods of the workload"))
    return problems


def _decode(value: Any) -> Any:
    """Pulumi hands structured config values over as JSON strings and scalars as plain strings."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        return json.loads(value)
    return value


def _runtime_config() -> tuple[dict[str, Any], set[str]]:
    """Every `llm-serving:` key and which of them are secrets, wherever the runtime keeps them."""
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env()) | {
        k for k in merged if runtime_config.is_config_secret(k)
    }
    prefix = f"{PROJECT}:"
    values = {k.removeprefix(prefix): _decode(v) for k, v in merged.items() if k.startswith(prefix)}
    return values, {k.removeprefix(prefix) for k in secret_keys if k.startswith(prefix)}


def _secrets(values: dict[str, Any], secret_keys: set[str], config_registry: bool) -> tuple[
    StackSecrets, list[tuple[str, str]]
]:
    problems: list[tuple[str, str]] = []
    secrets: dict[str, pulumi.Output[str]] = {}
    for key, spec in SECRET_KEYS.items():
        value = values.pop(key, None)
        required = spec.required or (key == "registryPassword" and config_registry)
        if value is None:
            if required:
                problems.append((_key((key,)), (
                    f"required secret ({spec.description}) is missing; set it with "
                    f"`pulumi config set --secret {key}` (offline render: environment variable "
                    f"{secret_env_name(key)})"
                )))
            continue
        if key not in secret_keys:
            problems.append((_key((key,)), f"is set in plain text; allowed: a secret only, "
                                           f"set it with `pulumi config set --secret {key}`"))
            continue
        secrets[key] = pulumi.Output.secret(str(value))
    return StackSecrets(secrets), problems


def load_stack_config(stack: str | None = None) -> StackConfig:
    """The validated config of `stack` (default: the running stack), or a ConfigError naming every problem."""
    stack = stack or pulumi.get_stack()
    values, secret_keys = _runtime_config()
    secrets, problems = _secrets(values, secret_keys, config_registry="registry" in values)
    config: StackConfig | None = None
    try:
        config = StackConfig.model_validate(values)
    except ValidationError as error:
        problems += [(_key(tuple(e["loc"])), _problem(e)) for e in error.errors()]
    if config is not None:
        problems += _cross_checks(config)
    if problems:
        raise ConfigError(stack_file(stack), problems)
    assert config is not None
    config._stack = stack
    config._secrets = secrets
    return config
