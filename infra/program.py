"""The Pulumi program: load the stack config, build the cloud target, the platform layer on its cluster,
then the serving stack on both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import pulumi

from infra.clouds import target_builder
from infra.clouds.base import CloudTarget
from infra.clouds.common import log_agent_namespace, log_agent_service_account
from infra.components.autoscaling import Autoscaler, AutoscalerArgs
from infra.components.logging import LoggingAgent, LoggingArgs
from infra.components.monitoring import DASHBOARD_LABEL, Monitoring, MonitoringArgs
from infra.components.namespace import Namespace, NamespaceArgs
from infra.components.naming import App
from infra.components.platform import Platform, PlatformArgs, PlatformReady
from infra.components.platform.component import IssuerArgs
from infra.components.platform.values import MonitoringStack
from infra.components.security import Security, SecurityArgs
from infra.components.service import HTTP_LISTENER, ServiceArgs, ServingEndpoint
from infra.components.settings import server_environment
from infra.components.storage import ModelStorage, ModelStorageArgs, model_sources
from infra.components.workload import InferenceWorkload, InferenceWorkloadArgs, Placement, Resources
from infra.config import MODEL_DIR, StackConfig, load_stack_config
from infra.config.platform import Addon
from infra.config.traffic import GATEWAY_NAMESPACE, INGRESS_NAMESPACE


@dataclass(frozen=True)
class ServingStack:
    """What later components (monitoring, logging) build on."""

    config: StackConfig
    target: CloudTarget
    app: App
    namespace: Namespace
    # Options for every namespaced component: the target's provider, after the namespace exists.
    opts: pulumi.ResourceOptions
    workload: InferenceWorkload
    endpoint: ServingEndpoint
    platform: PlatformReady


def _resources(config: StackConfig) -> Resources:
    res, gpu = config.resources, config.gpu
    gpus = {gpu.resource_name: str(gpu.count)} if gpu.count else {}
    return Resources(
        requests={"cpu": res.requests.cpu, "memory": res.requests.memory, **gpus},
        limits={"cpu": res.limits.cpu, "memory": res.limits.memory, **gpus},
        shm_size=res.shm_size,
        cache_size=res.cache_size,
        tmp_size=res.tmp_size,
    )


def _placement(config: StackConfig, target: CloudTarget) -> Placement:
    selector = dict(target.node_selector)
    if config.gpu.count and config.gpu.type:
        selector["nvidia.com/gpu.product"] = config.gpu.type
    return Placement(node_selector=selector, tolerations=list(target.tolerations))


def _provider_opts(target: CloudTarget) -> pulumi.ResourceOptions:
    provider = target.kubernetes_provider
    return pulumi.ResourceOptions(providers=[provider] if provider else None)


def _after(opts: pulumi.ResourceOptions, resources: list[pulumi.Resource]) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=resources))


def gateway_namespace(config: StackConfig) -> str:
    """Where the proxies that forward outside traffic to the server run."""
    default = GATEWAY_NAMESPACE if config.ingress.kind == "gateway" else INGRESS_NAMESPACE
    return config.network.ingress_controller_namespace or default


def platform_installs(config: StackConfig, target: CloudTarget) -> frozenset[str]:
    """The add-ons the platform layer installs: as the stack sets them, or what the serving stack needs
    when the stack created its cluster."""
    ingress, monitoring = config.ingress, config.monitoring
    needed: dict[str, bool] = {
        "gateway": ingress.enabled and ingress.kind == "gateway",
        "cert_manager": ingress.enabled and ingress.tls.enabled,
        "prometheus": monitoring.enabled and monitoring.mode == "operator",
        "metrics_server": config.autoscaling.enabled,
        "metrics_adapter": config.autoscaling.enabled,
        "device_plugin": config.gpu.count > 0,
    }
    created, platform = target.cluster_created, config.platform
    return frozenset(
        addon for addon in get_args(Addon) if platform.installs(addon, created, needed.get(addon, True))
    )


def build_platform(config: StackConfig, target: CloudTarget) -> PlatformReady:
    installs = platform_installs(config, target)
    if not installs and not target.platform.releases:
        return PlatformReady()
    app = App.from_config(config)
    ingress = config.ingress
    issuer = None
    if "cert_manager" in installs and ingress.enabled and ingress.tls.enabled and config.platform.acme_email:
        solver = (
            {"gatewayHTTPRoute": {"parentRefs": [{
                "name": app.name, "namespace": app.namespace, "kind": "Gateway", "sectionName": HTTP_LISTENER,
            }]}}
            if ingress.kind == "gateway"
            else {"ingress": {"ingressClassName": ingress.class_name}}
        )
        issuer = IssuerArgs(
            name=ingress.tls.cluster_issuer, email=config.platform.acme_email,
            server=config.platform.acme_server, solver={"http01": solver},
        )
    placement = _placement(config, target)
    platform = Platform("platform", PlatformArgs(
        installs=installs,
        cloud=target.platform,
        gateway_class=ingress.gateway_class_name,
        issuer=issuer,
        monitoring=MonitoringStack(
            namespace=config.network.prometheus_namespace,
            selector_labels=config.monitoring.operator_labels,
            dashboard_label=next(iter(DASHBOARD_LABEL.items())),
            grafana=config.platform.grafana,
            full=config.platform.prometheus_stack == "full",
            grafana_admin_password=config.secrets.get("grafanaAdminPassword"),
        ),
        gpu_node_selector=placement.node_selector,
        gpu_tolerations=placement.tolerations,
        chart_values=config.platform.chart_values,
    ), _provider_opts(target))
    return platform.ready


def build_serving_stack(
    config: StackConfig, target: CloudTarget, platform: PlatformReady | None = None
) -> ServingStack:
    platform = platform or PlatformReady()
    app = App.from_config(config)
    provider_opts = _provider_opts(target)
    namespace = Namespace("namespace", NamespaceArgs(
        app=app, quota=config.quota, limit_range=config.limit_range,
        gpu_resource_name=config.gpu.resource_name, extra_labels=target.namespace_labels,
    ), provider_opts)
    opts = _after(provider_opts, [namespace])

    model_sync = target.model_sync if config.model.source == "bucket" else None
    storage = None
    if config.model.source != "demo":
        adapters = [(a.name, a.bucket_prefix) for a in config.model.lora_adapters]
        storage = ModelStorage("model-storage", ModelStorageArgs(
            app=app, size=config.model.storage_size, access_mode=config.model.access_mode,
            storage_class=target.storage_class, model_sync=model_sync,
            sources=model_sources(config.model.bucket_prefix, adapters),
        ), opts)
    scaling = config.autoscaling
    max_surge, max_unavailable = config.rollout_strategy
    workload = InferenceWorkload("workload", InferenceWorkloadArgs(
        app=app,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        environment=server_environment(config, model_path=MODEL_DIR if storage else None),
        api_key=config.api_key,
        resources=_resources(config),
        placement=_placement(config, target),
        replicas=None if scaling.enabled else config.replicas,
        max_replicas=config.max_replicas,
        load_timeout_seconds=config.model.load_timeout_seconds,
        drain_timeout_seconds=config.server.drain_timeout_seconds,
        max_surge=max_surge,
        max_unavailable=max_unavailable,
        pre_stop_seconds=config.rollout.pre_stop_seconds,
        volumes=storage.volumes if storage else (),
        volume_mounts=storage.server_mounts if storage else (),
        init_containers=storage.init_containers if storage else (),
        service_account_annotations=model_sync.service_account_annotations if model_sync else {},
        service_account_labels=model_sync.service_account_labels if model_sync else {},
        registry=config.registry,
        registry_password=config.secrets.get("registryPassword"),
    ), _after(opts, platform.workload))
    endpoint = ServingEndpoint("endpoint", ServiceArgs(
        app=app, service_type=target.service_type, service_annotations=target.service_annotations,
        ingress=config.ingress if config.ingress.enabled else None,
    ), _after(opts, platform.gateway))
    if scaling.enabled:
        Autoscaler("autoscaler", AutoscalerArgs(app=app, scaling=scaling), _after(opts, platform.autoscaling))
    ingress = config.ingress
    Security("security", SecurityArgs(
        app=app,
        ingress_controller_namespace=gateway_namespace(config),
        prometheus_namespace=config.network.prometheus_namespace,
        model_download_cidrs=list(model_sync.egress_cidrs) if model_sync else None,
        node_local_dns=config.network.node_local_dns,
        acme_http01=ingress.enabled and ingress.tls.enabled,
    ), opts)
    return ServingStack(config, target, app, namespace, opts, workload, endpoint, platform)


def build_observability(stack: ServingStack) -> None:
    """Monitoring and logging of the serving stack, each when the stack config turns it on."""
    config = stack.config
    if config.monitoring.enabled:
        Monitoring("monitoring", MonitoringArgs(
            app=stack.app, config=config.monitoring, autoscaled=config.autoscaling.enabled,
            prometheus_namespace=config.network.prometheus_namespace,
        ), _after(stack.opts, stack.platform.monitoring))
    if config.logging.enabled:
        LoggingAgent("logging", LoggingArgs(
            app=stack.app, config=config.logging, sink=stack.target.log_sink,
            namespace=log_agent_namespace(config), service_account=log_agent_service_account(config),
            placement=_placement(config, stack.target),
        ), stack.opts)


def run() -> None:
    """The whole program, as `pulumi up` and the offline render run it."""
    config = load_stack_config()
    target = target_builder(config.cloud)(config)
    stack = build_serving_stack(config, target, build_platform(config, target))
    build_observability(stack)
    pulumi.export("namespace", stack.namespace.name)
    pulumi.export("service", stack.endpoint.service_name)
    pulumi.export("url", stack.endpoint.url)
    for key, value in sorted(target.outputs.items()):
        pulumi.export(key, value)
