"""What every managed cloud target must do, as one contract over a per-cloud table: each example stack
creates its cluster (and the same stack on an existing cluster declares none), and what differs per cloud
is only the data in CLOUDS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from infra.charts import CHARTS
from infra.clouds.alicloud import LB_ANNOTATION
from infra.clouds.aws import TAINT_EFFECTS
from infra.clouds.tencent import INTERNAL_SUBNET_ANNOTATION
from infra.config import StackConfig
from infra.render import HELM_RELEASE, RecordingMocks
from tests.infra.cloud_stacks import (
    KUBECONFIG,
    assert_retention_rejected,
    assert_workload_fits_gpu_pool,
    load_config,
    model_volume_storage_class,
    only_resource,
    resources,
    run_stack,
    stack_values,
    with_changes,
)

AWS_EFFECT = {aws: kube for kube, aws in TAINT_EFFECTS.items()}
Pool = tuple[list[dict[str, Any]], dict[str, str]]  # the GPU pool's taints (Kubernetes spelling), labels


@dataclass(frozen=True)
class Cloud:
    stack: str
    existing: dict[str, Any]
    cluster: str  # type token of the cluster
    node_pool: str  # type token of a node pool
    gpu_pool: Callable[[dict[str, Any]], Pool]
    storage: dict[str, str]  # parameters the model volume's StorageClass must have
    provisioner: str
    log_store: tuple[str, str]  # type token and input of the log retention
    bad_retention: int
    load_balancer: Callable[[StackConfig], dict[str, str]]  # annotations the public entry point carries
    # Cloud-side resources that make NetworkPolicy enforced and autoscale the GPU pool: (token, check).
    network_policy: tuple[str, Callable[[dict[str, Any]], bool]]
    node_autoscaling: Callable[[RecordingMocks], bool]
    releases: set[str]  # Helm releases a created cluster gets
    existing_secrets: dict[str, str] = field(default_factory=dict)


def _aws_pool(pool: dict[str, Any]) -> Pool:
    return [{**t, "effect": AWS_EFFECT[t["effect"]]} for t in pool["taints"]], pool["labels"]


def _alicloud_pool(pool: dict[str, Any]) -> Pool:
    return pool["taints"], {label["key"]: label["value"] for label in pool["labels"]}


def _releases(mocks: RecordingMocks) -> dict[str, Any]:
    return {r.inputs["name"]: r for r in resources(mocks, HELM_RELEASE)}


BASE_RELEASES = {
    "envoy-gateway", "cert-manager", "prometheus-operator-crds", "kube-prometheus-stack",
    "prometheus-adapter", "metrics-server",
}

CLOUDS = {
    "aws": Cloud(
        stack="prod",
        existing={"aws.cluster": None, "aws.existingCluster": {"name": "team-gpu"}},
        cluster="aws:eks/cluster:Cluster",
        node_pool="aws:eks/nodeGroup:NodeGroup",
        gpu_pool=_aws_pool,
        storage={"type": "gp3", "encrypted": "true"},
        provisioner="ebs.csi.aws.com",
        log_store=("aws:cloudwatch/logGroup:LogGroup", "retentionInDays"),
        bad_retention=8,
        load_balancer=lambda config: {
            "service.beta.kubernetes.io/aws-load-balancer-type": "external",
            "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
            "service.beta.kubernetes.io/aws-load-balancer-scheme": config.aws.load_balancer_scheme,  # type: ignore[union-attr]
        },
        network_policy=(
            "aws:eks/addon:Addon",
            lambda addon: addon["addonName"] == "vpc-cni"
            and '"enableNetworkPolicy": "true"' in addon.get("configurationValues", ""),
        ),
        node_autoscaling=lambda mocks: "cluster-autoscaler" in _releases(mocks),
        releases=BASE_RELEASES
        | {"nvidia-device-plugin", "aws-load-balancer-controller", "cluster-autoscaler"},
    ),
    "alicloud": Cloud(
        stack="prod-alicloud",
        existing={
            "alicloud.cluster": None,
            "alicloud.existingCluster": {
                "name": "c0123456789abcdef",
                "rrsaOidcProviderArn": "acs:ram::1234567890:oidc-provider/ack-rrsa-c0123456789abcdef",
                "rrsaOidcIssuerUrl": "https://oidc-ack.cn-hangzhou.aliyuncs.com/c0123456789abcdef",
            },
        },
        existing_secrets={"kubeconfig": KUBECONFIG},
        cluster="alicloud:cs/managedKubernetes:ManagedKubernetes",
        node_pool="alicloud:cs/nodePool:NodePool",
        gpu_pool=_alicloud_pool,
        storage={"type": "cloud_essd", "encrypted": "true"},
        provisioner="diskplugin.csi.alibabacloud.com",
        log_store=("alicloud:log/store:Store", "retentionPeriod"),
        bad_retention=3651,
        load_balancer=lambda config: {
            f"{LB_ANNOTATION}address-type": config.alicloud.load_balancer_address_type,  # type: ignore[union-attr]
        },
        network_policy=(
            "alicloud:cs/managedKubernetes:ManagedKubernetes",
            lambda cluster: any(
                a["name"] == "terway-eniip" and '"NetworkPolicy": "true"' in a.get("config", "")
                for a in cluster["addons"]
            ) and not any(a["name"] == "flannel" for a in cluster["addons"]),
        ),
        node_autoscaling=lambda mocks: bool(
            resources(mocks, "alicloud:cs/autoscalingConfig:AutoscalingConfig")
        ),
        releases=BASE_RELEASES,
    ),
    "tencent": Cloud(
        stack="prod-tencent",
        existing={"tencent.cluster": None, "tencent.existingCluster": {"name": "cls-0123abcd"}},
        existing_secrets={"kubeconfig": KUBECONFIG},
        cluster="tencentcloud:Kubernetes/cluster:Cluster",
        node_pool="tencentcloud:Kubernetes/nodePool:NodePool",
        gpu_pool=lambda pool: (pool["taints"], pool["labels"]),
        storage={"diskType": "CLOUD_PREMIUM"},
        provisioner="com.tencent.cloud.csi.cbs",
        log_store=("tencentcloud:Cls/topic:Topic", "period"),
        bad_retention=3650,
        load_balancer=lambda config: {
            INTERNAL_SUBNET_ANNOTATION: config.tencent.load_balancer_internal_subnet_id,  # type: ignore[union-attr]
        },
        network_policy=(
            "tencentcloud:Kubernetes/addon:Addon", lambda addon: addon["addonName"] == "networkpolicy"
        ),
        node_autoscaling=lambda mocks: any(
            r.inputs.get("enableAutoScale") is True and r.name.endswith("-gpu")
            for r in resources(mocks, "tencentcloud:Kubernetes/nodePool:NodePool")
        ),
        releases=BASE_RELEASES | {"nvidia-device-plugin"},
    ),
}

pytestmark = pytest.mark.parametrize("cloud", list(CLOUDS.values()), ids=list(CLOUDS))
_runs: dict[tuple[str, str], RecordingMocks] = {}


def created(cloud: Cloud) -> RecordingMocks:
    """The stack file as it is (creating its cluster), run once per session."""
    key = (cloud.stack, "created")
    if key not in _runs:
        _runs[key] = run_stack(cloud.stack, stack_values(cloud.stack))
    return _runs[key]


def existing(cloud: Cloud, **changes: Any) -> RecordingMocks:
    values = with_changes(stack_values(cloud.stack), {**cloud.existing, **changes})
    return run_stack(cloud.stack, values, secrets=cloud.existing_secrets)


def config(cloud: Cloud) -> StackConfig:
    return load_config(cloud.stack, stack_values(cloud.stack))


def test_created_cluster_has_a_gpu_pool_the_workload_fits(cloud: Cloud) -> None:
    mocks = created(cloud)
    assert len(resources(mocks, cloud.cluster)) == 1
    gpu_pools = [r.inputs for r in resources(mocks, cloud.node_pool) if r.name.endswith("-gpu")]
    (pool,) = gpu_pools
    taints, labels = cloud.gpu_pool(pool)
    assert_workload_fits_gpu_pool(mocks, config(cloud), taints, labels)


def test_existing_cluster_declares_no_cluster_or_node_pool(cloud: Cloud) -> None:
    mocks = existing(cloud)
    assert resources(mocks, cloud.cluster) == []
    assert resources(mocks, cloud.node_pool) == []
    assert resources(mocks, "pulumi:providers:kubernetes")


def test_model_volumes_are_encrypted_and_deleted_with_their_pod(cloud: Cloud) -> None:
    storage_class = model_volume_storage_class(created(cloud))
    assert storage_class["provisioner"] == cloud.provisioner
    assert cloud.storage.items() <= storage_class["parameters"].items()
    assert storage_class["reclaimPolicy"] == "Delete"


def test_logs_kept_for_the_configured_retention(cloud: Cloud) -> None:
    token, key = cloud.log_store
    assert only_resource(created(cloud), token)[key] == config(cloud).logging.retention_days
    assert_retention_rejected(cloud.stack, stack_values(cloud.stack), cloud.bad_retention)


def test_the_gateway_carries_the_clouds_load_balancer_and_the_service_stays_internal(cloud: Cloud) -> None:
    mocks = created(cloud)
    (proxy,) = [o for o in mocks.kubernetes_objects() if o["kind"] == "EnvoyProxy"]
    service = proxy["spec"]["provider"]["kubernetes"]["envoyService"]
    assert service["type"] == "LoadBalancer"
    assert cloud.load_balancer(config(cloud)).items() <= service["annotations"].items()
    (server_service,) = [o for o in mocks.kubernetes_objects() if o["kind"] == "Service"]
    assert server_service["spec"]["type"] == "ClusterIP"


def test_created_cluster_gets_every_add_on_pinned(cloud: Cloud) -> None:
    releases = _releases(created(cloud))
    assert set(releases) == cloud.releases
    for name, release in releases.items():
        chart = CHARTS[name]
        assert (release.inputs["chart"], release.inputs["version"]) == (chart.chart, chart.version)
        assert release.inputs["namespace"] == chart.namespace


def test_add_ons_are_applied_before_what_needs_them(cloud: Cloud) -> None:
    mocks = created(cloud)
    releases = {name: f"{HELM_RELEASE} {r.name}" for name, r in _releases(mocks).items()}

    def waits(kind_or_token: str, name_suffix: str, before: str) -> bool:
        found = [r for r in mocks.resources if kind_or_token in (r.type, r.inputs.get("kind"))
                 and r.name.endswith(name_suffix)]
        assert found, kind_or_token
        return all(releases[before] in r.depends_on for r in found)

    assert waits("ServiceMonitor", "servicemonitor", "prometheus-operator-crds")
    assert waits("PrometheusRule", "prometheusrule", "prometheus-operator-crds")
    assert waits("ClusterIssuer", "clusterissuer", "cert-manager")
    assert waits("Gateway", "gateway", "envoy-gateway")
    assert waits("HTTPRoute", "httproute", "envoy-gateway")
    assert waits("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", "", "prometheus-adapter")
    assert waits(HELM_RELEASE, "kube-prometheus-stack", "prometheus-operator-crds")
    assert waits(HELM_RELEASE, "prometheus-adapter", "kube-prometheus-stack")
    if "nvidia-device-plugin" in releases:
        assert waits("kubernetes:apps/v1:Deployment", "", "nvidia-device-plugin")
    if "aws-load-balancer-controller" in releases:
        for name in releases.keys() - {"aws-load-balancer-controller", "cluster-autoscaler"}:
            if name in ("kube-prometheus-stack", "prometheus-adapter"):
                continue  # they wait for the CRDs, which wait for the controller
            assert waits(HELM_RELEASE, name, "aws-load-balancer-controller"), name


def test_network_policy_is_enforced(cloud: Cloud) -> None:
    token, enforces = cloud.network_policy
    assert any(enforces(r.inputs) for r in resources(created(cloud), token))


def test_gpu_pool_autoscales(cloud: Cloud) -> None:
    assert cloud.node_autoscaling(created(cloud))


def test_existing_cluster_gets_no_add_on_unless_asked(cloud: Cloud) -> None:
    assert _releases(existing(cloud)) == {}
    asked = existing(cloud, **{"platform.gateway": True, "platform.metricsServer": True})
    assert set(_releases(asked)) == {"envoy-gateway", "metrics-server"}
