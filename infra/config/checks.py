"""Rules that span keys; each problem names the key to change."""

from __future__ import annotations

from pydantic import ValidationError

from inference.config import ServerConfig
from infra.charts import CHARTS
from infra.config.base import PROJECT
from infra.config.stack import StackConfig
from infra.quantity import to_decimal


def config_key(*loc: str | int) -> str:
    """The full key of a location: ('autoscaling', 'maxReplicas') -> llm-serving:autoscaling.maxReplicas."""
    head, *rest = loc
    return f"{PROJECT}:{head}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def cross_checks(config: StackConfig) -> list[tuple[str, str]]:
    """Rules that span keys; each problem names the key to change."""
    problems: list[tuple[str, str]] = []
    scaling = config.autoscaling
    if scaling.enabled and scaling.min_replicas > scaling.max_replicas:
        problems.append((config_key("autoscaling", "minReplicas"),
                         f"{scaling.min_replicas} is above autoscaling.maxReplicas ({scaling.max_replicas}); "
                         "allowed: minReplicas <= maxReplicas"))
    if config.cloud != "local" and getattr(config, config.cloud) is None:
        problems.append((config_key(config.cloud), f"cloud is {config.cloud!r}, so its section is required"))
    if config.cloud == "local" and config.model.source == "bucket":
        problems.append((config_key("model", "source"),
                         "the local cloud has no model bucket; allowed: 'demo' or 'volume'"))
    problems += _model_volume_checks(config)
    if config.ingress.enabled and not config.ingress.host:
        problems.append((config_key("ingress", "host"), "required when ingress.enabled is true"))
    for resource in ("cpu", "memory"):
        requested = getattr(config.resources.requests, resource)
        limit = getattr(config.resources.limits, resource)
        if to_decimal(requested) > to_decimal(limit):
            problems.append((config_key("resources", "requests", resource),
                             f"{requested} is above resources.limits.{resource} ({limit}); "
                             "allowed: requests <= limits"))
    problems += _quota_checks(config)
    problems += _gpu_pool_checks(config)
    problems += _platform_checks(config)
    shm, memory = config.resources.shm_size, config.resources.limits.memory
    if to_decimal(shm) >= to_decimal(memory):
        problems.append((config_key("resources", "shmSize"),
                         f"{shm} is not below resources.limits.memory ({memory}); a memory-backed /dev/shm "
                         "counts against the memory limit; allowed: a smaller shmSize or a larger limit"))
    if config.rollout_strategy == (0, 0):
        problems.append((config_key("rollout", "maxUnavailable"),
                         "0 with rollout.maxSurge 0 can never replace a pod; allowed: one of them above 0"))
    if config.model.lora_adapters and config.model.source != "bucket":
        problems.append((config_key("model", "loraAdapters"),
                         "adapters are synced from the bucket; allowed: with model.source 'bucket' only"))
    problems += _server_checks(config)
    names = [adapter.name for adapter in config.model.lora_adapters]
    if len(set(names)) != len(names):
        problems.append((config_key("model", "loraAdapters"),
                         f"names repeat ({names}); allowed: unique names"))
    return problems


def _server_checks(config: StackConfig) -> list[tuple[str, str]]:
    """The server's own rules over the settings the deployment gives it (e.g. no LoRA with tensor
    parallelism): a refusal here, not a crash loop after `pulumi up`."""
    settings = {**config.server.model_dump(exclude_none=True), **config.derived_server_settings}
    settings = {field: value for field, value in settings.items() if field in ServerConfig.model_fields}
    try:
        ServerConfig.model_validate(settings)
    except ValidationError as error:
        key = ("model", "loraAdapters") if config.model.lora_adapters else ("gpu", "count")
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        return [(config_key(*key), f"the server refuses the settings this gives it: {reasons}")]
    return []


def _platform_checks(config: StackConfig) -> list[tuple[str, str]]:
    platform, tls = config.platform, config.ingress.tls
    unknown = sorted(set(platform.chart_values) - set(CHARTS))
    if unknown:
        return [(config_key("platform", "chartValues"),
                 f"unknown charts {unknown}; allowed: {', '.join(sorted(CHARTS))}")]
    issuer = platform.installs("cert_manager", config.creates_cluster, config.ingress.enabled and tls.enabled)
    if issuer and platform.acme_email is None:
        return [(config_key("platform", "acmeEmail"),
                 "required: the stack installs cert-manager and creates the ClusterIssuer "
                 f"{tls.cluster_issuer!r}, whose ACME account needs an e-mail address")]
    return []


def _gpu_pool_checks(config: StackConfig) -> list[tuple[str, str]]:
    """A created GPU pool must have the GPUs one pod asks for on one node, and room for every pod."""
    section = getattr(config, config.cloud, None) if config.cloud != "local" else None
    cluster = getattr(section, "cluster", None)
    if cluster is None or config.gpu.count == 0:
        return []
    pool, pool_key = cluster.node_pool, (config.cloud, "cluster", "nodePool")
    gpus = pool.gpus
    if gpus is None:
        return [(config_key(*pool_key, "gpusPerNode"),
                 f"required: the GPUs of {pool.instance_type} are not in the table of known instance types")]
    if config.gpu.count > gpus:
        return [(config_key("gpu", "count"),
                 f"{config.gpu.count} GPUs per pod, but {pool.instance_type} has {gpus}; all GPUs of a pod "
                 f"are on one node; allowed: at most {gpus}, or a larger instance type")]
    per_node = gpus // config.gpu.count
    capacity, surge = pool.max_size * per_node, config.rollout_strategy[0]
    if config.max_pods > capacity:
        key = ("autoscaling", "maxReplicas") if config.autoscaling.enabled else ("replicas",)
        return [(config_key(*key),
                 f"{config.max_replicas} replicas (+{surge} surge) need {config.max_pods} pods, but the GPU "
                 f"pool holds at most {capacity} ({pool.max_size} nodes x {per_node} pods); allowed: at most "
                 f"{capacity - surge}, or a larger {'.'.join(pool_key)}.maxSize")]
    return []


SHARED_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany")
PER_POD_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod")


def _model_volume_checks(config: StackConfig) -> list[tuple[str, str]]:
    """A shared model volume is mounted by every pod, on any node; a synced one is each pod's own."""
    model = config.model
    if model.source == "volume" and model.access_mode not in SHARED_ACCESS_MODES:
        return [(config_key("model", "accessMode"),
                 f"{model.access_mode} attaches the shared model volume to one node, but up to "
                 f"{config.max_pods} pods (with the rolling-update surge) mount it on any node; allowed: "
                 f"{' or '.join(SHARED_ACCESS_MODES)}, or model.source 'bucket' (a volume per pod)")]
    if model.source == "bucket" and model.access_mode not in PER_POD_ACCESS_MODES:
        return [(config_key("model", "accessMode"),
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
        (config_key("quota", key), f"{have} is below the {needed} the workload needs at {pods} pods")
        for key, (have, needed) in needs.items()
        if to_decimal(have) < needed
    ]
    if quota.gpus < config.gpu.count * pods:
        problems.append((config_key("quota", "gpus"), f"{quota.gpus} is below the {config.gpu.count * pods} "
                                                  f"GPUs the workload needs at {pods} pods"))
    if config.model.source != "demo":
        claims = pods if config.model.source == "bucket" else 1
        storage = to_decimal(config.model.storage_size) * claims
        if to_decimal(quota.storage) < storage:
            problems.append((config_key("quota", "storage"),
                             f"{quota.storage} is below the {config.model.storage_size} x {claims} model "
                             f"volume(s) the workload claims at {pods} pods"))
    if quota.pods < pods:
        problems.append((config_key("quota", "pods"),
                         f"{quota.pods} is below the {pods} pods of the workload"))
    return problems

