"""The Pulumi program: load the stack config, build the cloud target, then the serving stack on it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from infra.clouds import target_builder
from infra.clouds.base import CloudTarget
from infra.clouds.common import log_agent_namespace, log_agent_service_account
from infra.components.autoscaling import Autoscaler, AutoscalerArgs
from infra.components.logging import LoggingAgent, LoggingArgs
from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.components.namespace import Namespace, NamespaceArgs
from infra.components.naming import App
from infra.components.security import Security, SecurityArgs
from infra.components.service import ServiceArgs, ServingEndpoint
from infra.components.settings import server_environment
from infra.components.storage import ModelStorage, ModelStorageArgs
from infra.components.workload import InferenceWorkload, InferenceWorkloadArgs, Placement, Resources
from infra.config import MODEL_DIR, StackConfig, load_stack_config


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


def build_serving_stack(config: StackConfig, target: CloudTarget) -> ServingStack:
    app = App.from_config(config)
    provider_opts = pulumi.ResourceOptions(
        providers=[target.kubernetes_provider] if target.kubernetes_provider else None
    )
    namespace = Namespace("namespace", NamespaceArgs(
        app=app, quota=config.quota, limit_range=config.limit_range,
        gpu_resource_name=config.gpu.resource_name, extra_labels=target.namespace_labels,
    ), provider_opts)
    opts = pulumi.ResourceOptions.merge(provider_opts, pulumi.ResourceOptions(depends_on=[namespace]))

    model_sync = target.model_sync if config.model.source == "bucket" else None
    storage = None
    if config.model.source != "demo":
        storage = ModelStorage("model-storage", ModelStorageArgs(
            app=app, size=config.model.storage_size, access_mode=config.model.access_mode,
            storage_class=target.storage_class, model_sync=model_sync,
        ), opts)
    scaling = config.autoscaling
    workload = InferenceWorkload("workload", InferenceWorkloadArgs(
        app=app,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        environment=server_environment(config, model_path=MODEL_DIR if storage else None),
        api_key=config.api_key,
        resources=_resources(config),
        placement=_placement(config, target),
        replicas=None if scaling.enabled else config.replicas,
        max_replicas=scaling.max_replicas if scaling.enabled else config.replicas,
        load_timeout_seconds=config.model.load_timeout_seconds,
        drain_timeout_seconds=config.server.drain_timeout_seconds,
        volumes=storage.volumes if storage else (),
        volume_mounts=storage.server_mounts if storage else (),
        init_containers=storage.init_containers if storage else (),
        service_account_annotations=model_sync.service_account_annotations if model_sync else {},
        service_account_labels=model_sync.service_account_labels if model_sync else {},
        registry=config.registry,
        registry_password=config.secrets.get("registryPassword"),
    ), opts)
    endpoint = ServingEndpoint("endpoint", ServiceArgs(
        app=app, service_type=target.service_type, service_annotations=target.service_annotations,
        ingress=config.ingress if config.ingress.enabled else None,
    ), opts)
    if scaling.enabled:
        Autoscaler("autoscaler", AutoscalerArgs(app=app, scaling=scaling), opts)
    Security("security", SecurityArgs(
        app=app,
        ingress_controller_namespace=config.network.ingress_controller_namespace,
        prometheus_namespace=config.network.prometheus_namespace,
        model_download_cidrs=list(model_sync.egress_cidrs) if model_sync else None,
    ), opts)
    return ServingStack(config, target, app, namespace, opts, workload, endpoint)


def build_observability(stack: ServingStack) -> None:
    """Monitoring and logging of the serving stack, each when the stack config turns it on."""
    config = stack.config
    if config.monitoring.enabled:
        Monitoring("monitoring", MonitoringArgs(
            app=stack.app, config=config.monitoring, autoscaled=config.autoscaling.enabled,
            prometheus_namespace=config.network.prometheus_namespace,
        ), stack.opts)
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
    stack = build_serving_stack(config, target)
    build_observability(stack)
    pulumi.export("namespace", stack.namespace.name)
    pulumi.export("service", stack.endpoint.service_name)
    pulumi.export("url", stack.endpoint.url)
    for key, value in sorted(target.outputs.items()):
        pulumi.export(key, value)
