"""The inference workload: settings, API key, service account, Deployment and disruption budget."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, Component, child_opts
from infra.components.pod_security import restricted_container_context, restricted_pod_context
from infra.components.settings import API_KEY_DIR, API_KEY_FILE_NAME, CACHE_DIR, TMP_DIR
from infra.config import SERVER_PORT, RegistryConfig

CONTAINER_NAME = "server"
PORT_NAME = "http"
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
METRICS_PATH = "/metrics"
STARTUP_PROBE_PERIOD_SECONDS = 10
# Time beyond the server's own drain for the endpoint removal to reach every proxy.
DRAIN_MARGIN_SECONDS = 15
# Time beyond the model load for pulling the image and scheduling the pod.
ROLLOUT_MARGIN_SECONDS = 600


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    shm_size: str
    cache_size: str
    tmp_size: str


@dataclass(frozen=True)
class Placement:
    node_selector: Mapping[str, str]
    tolerations: Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class InferenceWorkloadArgs:
    app: App
    image: str
    image_pull_policy: str
    environment: Mapping[str, str]
    api_key: pulumi.Input[str]
    resources: Resources
    placement: Placement
    replicas: int | None  # None: a HorizontalPodAutoscaler owns the replica count
    max_replicas: int  # the most pods a rollout has to replace
    load_timeout_seconds: int
    drain_timeout_seconds: float
    max_surge: int
    max_unavailable: int
    pre_stop_seconds: int
    volumes: Sequence[k8s.core.v1.VolumeArgs] = ()
    volume_mounts: Sequence[k8s.core.v1.VolumeMountArgs] = ()
    init_containers: Sequence[k8s.core.v1.ContainerArgs] = ()
    service_account_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    service_account_labels: Mapping[str, str] = field(default_factory=dict)
    registry: RegistryConfig | None = None
    registry_password: pulumi.Input[str] | None = None


def termination_grace_seconds(drain_timeout_seconds: float, pre_stop_seconds: int) -> int:
    """The preStop wait, then the server's own drain, then a margin."""
    return pre_stop_seconds + math.ceil(drain_timeout_seconds) + DRAIN_MARGIN_SECONDS


def rollout_timeout_seconds(load_timeout_seconds: int, max_replicas: int, pods_at_once: int) -> int:
    """How long `pulumi up` waits for the Deployment: a rollout replaces `pods_at_once` at a time."""
    return (load_timeout_seconds + ROLLOUT_MARGIN_SECONDS) * math.ceil(max_replicas / pods_at_once)


def unpinned_digest_skips(images: Sequence[str]) -> dict[str, str]:
    """checkov skip annotations for images given by tag: a digest is the user's choice, not ours."""
    if all("@" in image for image in images):
        return {}
    return {
        "checkov.io/skip1": "CKV_K8S_43=the stack pins the image by tag; set image to repo@sha256:... "
        "to pin it by digest"
    }


def _docker_config(server: str, username: str, password: str) -> str:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {server: {"username": username, "password": password, "auth": auth}}})


def _probe(path: str, period: int, timeout: int, failures: int) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=PORT_NAME),
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=failures,
    )


def _empty_dir(name: str, size: str, medium: str | None = None) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium=medium, size_limit=size)
    )


def _spread(app: App, topology_key: str) -> k8s.core.v1.TopologySpreadConstraintArgs:
    return k8s.core.v1.TopologySpreadConstraintArgs(
        max_skew=1,
        topology_key=topology_key,
        # A full zone or node must not block a rollout; spreading is the preference.
        when_unsatisfiable="ScheduleAnyway",
        label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=app.selector()),
        match_label_keys=["pod-template-hash"],
    )


class InferenceWorkload(Component):
    def __init__(
        self, name: str, args: InferenceWorkloadArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("llm-serving:workload:InferenceWorkload", name, opts)
        app = args.app

        self.settings = k8s.core.v1.ConfigMap(
            f"{app.settings_config_map}-configmap",
            metadata=app.metadata(app.settings_config_map),
            data=dict(args.environment),
            opts=child_opts(self),
        )
        self.api_key = k8s.core.v1.Secret(
            f"{app.api_key_secret}-secret",
            metadata=app.metadata(app.api_key_secret),
            type="Opaque",
            string_data={API_KEY_FILE_NAME: args.api_key},
            opts=child_opts(self),
        )
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{app.service_account}-serviceaccount",
            metadata=app.metadata(
                app.service_account,
                labels=args.service_account_labels,
                annotations=args.service_account_annotations,
            ),
            # The server never calls the Kubernetes API; a mounted token would only be a liability.
            automount_service_account_token=False,
            opts=child_opts(self),
        )
        pull_secrets = self._pull_secrets(args)
        self.deployment = self._deployment(args, pull_secrets)
        k8s.policy.v1.PodDisruptionBudget(
            f"{app.name}-poddisruptionbudget",
            metadata=app.metadata(app.name),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=app.selector()),
                # A pod that never became ready must not block a node drain.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=child_opts(self),
        )
        self.register_outputs({"deployment": self.deployment.metadata.name})

    def _pull_secrets(self, args: InferenceWorkloadArgs) -> list[k8s.core.v1.LocalObjectReferenceArgs]:
        if args.registry is None or args.registry_password is None:
            return []
        app, registry = args.app, args.registry
        name = f"{app.name}-registry"
        k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=app.metadata(name),
            type="kubernetes.io/dockerconfigjson",
            string_data={
                ".dockerconfigjson": pulumi.Output.from_input(args.registry_password).apply(
                    lambda password: _docker_config(registry.server, registry.username, password)
                )
            },
            opts=child_opts(self),
        )
        return [k8s.core.v1.LocalObjectReferenceArgs(name=name)]

    def _container(self, args: InferenceWorkloadArgs) -> k8s.core.v1.ContainerArgs:
        resources = args.resources
        return k8s.core.v1.ContainerArgs(
            name=CONTAINER_NAME,
            image=args.image,
            image_pull_policy=args.image_pull_policy,
            ports=[k8s.core.v1.ContainerPortArgs(name=PORT_NAME, container_port=SERVER_PORT, protocol="TCP")],
            env_from=[
                k8s.core.v1.EnvFromSourceArgs(
                    config_map_ref=k8s.core.v1.ConfigMapEnvSourceArgs(name=args.app.settings_config_map)
                )
            ],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests=dict(resources.requests), limits=dict(resources.limits)
            ),
            # Readiness covers the model load, so liveness starts only once the model is loaded.
            startup_probe=_probe(
                READY_PATH,
                STARTUP_PROBE_PERIOD_SECONDS,
                5,
                math.ceil(args.load_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS),
            ),
            liveness_probe=_probe(LIVE_PATH, 10, 5, 3),
            # Endpoint removal reaches the proxies a few seconds after the pod is told to stop: until
            # then new requests still arrive, so the server keeps accepting them this long.
            lifecycle=k8s.core.v1.LifecycleArgs(
                pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=["sleep", str(args.pre_stop_seconds)])
                )
            ) if args.pre_stop_seconds else None,
            readiness_probe=_probe(READY_PATH, 5, 3, 3),
            security_context=restricted_container_context(),
            volume_mounts=[
                *args.volume_mounts,
                k8s.core.v1.VolumeMountArgs(name="api-key", mount_path=API_KEY_DIR, read_only=True),
                k8s.core.v1.VolumeMountArgs(name="shm", mount_path="/dev/shm"),
                k8s.core.v1.VolumeMountArgs(name="cache", mount_path=CACHE_DIR),
                k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=TMP_DIR),
            ],
        )

    def _deployment(
        self, args: InferenceWorkloadArgs, pull_secrets: list[k8s.core.v1.LocalObjectReferenceArgs]
    ) -> k8s.apps.v1.Deployment:
        app, resources = args.app, args.resources
        settings_hash = hashlib.sha256(
            json.dumps(dict(args.environment), sort_keys=True).encode()
        ).hexdigest()
        images = [args.image, *(str(c.image) for c in args.init_containers)]
        annotations = {
            "pulumi.com/timeoutSeconds": str(
                rollout_timeout_seconds(
                    args.load_timeout_seconds, args.max_replicas, max(args.max_surge, args.max_unavailable)
                )
            ),
            **unpinned_digest_skips(images),
        }
        pod_spec = k8s.core.v1.PodSpecArgs(
            service_account_name=app.service_account,
            automount_service_account_token=False,
            enable_service_links=False,
            security_context=restricted_pod_context(),
            termination_grace_period_seconds=termination_grace_seconds(
                args.drain_timeout_seconds, args.pre_stop_seconds
            ),
            node_selector=dict(args.placement.node_selector) or None,
            tolerations=[k8s.core.v1.TolerationArgs(**t) for t in args.placement.tolerations] or None,
            topology_spread_constraints=[
                _spread(app, "topology.kubernetes.io/zone"),
                _spread(app, "kubernetes.io/hostname"),
            ],
            image_pull_secrets=pull_secrets or None,
            init_containers=list(args.init_containers) or None,
            containers=[self._container(args)],
            volumes=[
                *args.volumes,
                k8s.core.v1.VolumeArgs(
                    name="api-key",
                    secret=k8s.core.v1.SecretVolumeSourceArgs(
                        secret_name=app.api_key_secret,
                        default_mode=0o440,
                    ),
                ),
                _empty_dir("shm", resources.shm_size, medium="Memory"),
                _empty_dir("cache", resources.cache_size),
                _empty_dir("tmp", resources.tmp_size),
            ],
        )
        return k8s.apps.v1.Deployment(
            f"{app.name}-deployment",
            metadata=app.metadata(app.name, annotations=annotations),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=args.replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=app.selector()),
                # From the stack's rollout keys: on a full GPU pool a surge pod would wait for a node forever.
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                        max_unavailable=args.max_unavailable, max_surge=args.max_surge
                    ),
                ),
                # The deadline restarts with each pod that becomes ready; one model load must fit in it.
                progress_deadline_seconds=args.load_timeout_seconds + ROLLOUT_MARGIN_SECONDS,
                revision_history_limit=5,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=app.labels(),
                        annotations={
                            # A changed setting rolls the pods, which read settings only at start.
                            "llm-serving/settings-sha256": settings_hash,
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(SERVER_PORT),
                            "prometheus.io/path": METRICS_PATH,
                        },
                    ),
                    spec=pod_spec,
                ),
            ),
            opts=child_opts(self, depends_on=[self.settings, self.api_key, self.service_account]),
        )
