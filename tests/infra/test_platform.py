"""The platform layer as the serving stack sees it: the adapter's rule names only catalog metrics, and
what Prometheus, Grafana and the issuer select is what the serving stack's objects carry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference import metrics
from infra.components.autoscaling import POD_METRICS
from infra.monitoring.adapter import adapter_rules
from infra.render import HELM_RELEASE, RecordingMocks
from tests.infra.cloud_stacks import kubernetes_object, resources, run_stack, stack_values, with_changes
from tests.infra.conftest import GRAFANA_PASSWORD
from tests.infra.promql_names import series_names

CATALOG = {name for spec in metrics.CATALOG for name in spec.series_names()}
# prometheus-adapter's metricsQuery is a template; these are the values it substitutes.
TEMPLATE = {
    "<<.Series>>": "{series}", "<<.LabelMatchers>>": 'namespace="serving",pod="p-0"', "<<.GroupBy>>": "pod"
}


def _instantiate(rule: dict[str, Any]) -> str:
    (series,) = series_names(rule["seriesQuery"])
    query = rule["metricsQuery"]
    for placeholder, value in TEMPLATE.items():
        query = query.replace(placeholder, value.format(series=series))
    return query


def test_adapter_rules_name_only_catalog_metrics() -> None:
    rules = adapter_rules(POD_METRICS)
    assert rules
    for rule in rules:
        assert series_names(rule["seriesQuery"]) <= CATALOG
        assert series_names(_instantiate(rule)) <= CATALOG
        assert rule["name"]["as"] in CATALOG


def test_adapter_serves_the_metric_the_hpa_scales_on() -> None:
    mocks = run_stack("prod", stack_values("prod"))
    hpa = kubernetes_object(mocks, "HorizontalPodAutoscaler", "llm-serving")
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    served = {rule["name"]["as"] for rule in _values(mocks, "prometheus-adapter")["rules"]["custom"]}
    assert pods_metrics and pods_metrics <= served


def _values(mocks: RecordingMocks, chart: str) -> dict[str, Any]:
    (release,) = [r for r in resources(mocks, HELM_RELEASE) if r.inputs["name"] == chart]
    return release.inputs["values"]


@pytest.fixture(scope="module")
def prod() -> RecordingMocks:
    return run_stack("prod", stack_values("prod"))


def test_prometheus_selects_the_labels_the_service_monitor_and_rules_carry(prod: RecordingMocks) -> None:
    spec = _values(prod, "kube-prometheus-stack")["prometheus"]["prometheusSpec"]
    for kind, selector in (("ServiceMonitor", "serviceMonitorSelector"), ("PrometheusRule", "ruleSelector")):
        labels = kubernetes_object(prod, kind, "llm-serving")["metadata"]["labels"]
        assert spec[selector]["matchLabels"].items() <= labels.items()
        assert spec[f"{selector.removesuffix('Selector')}NamespaceSelector"] == {}


def test_grafana_sidecar_finds_the_dashboard(prod: RecordingMocks) -> None:
    sidecar = _values(prod, "kube-prometheus-stack")["grafana"]["sidecar"]["dashboards"]
    dashboard = kubernetes_object(prod, "ConfigMap", "llm-serving-dashboard")["metadata"]["labels"]
    assert dashboard[sidecar["label"]] == sidecar["labelValue"]
    assert sidecar["searchNamespace"] == "ALL"


def test_grafana_password_from_the_secret_stays_out_of_the_values(prod: RecordingMocks) -> None:
    grafana = _values(prod, "kube-prometheus-stack")["grafana"]
    secret = kubernetes_object(prod, "Secret", grafana["admin"]["existingSecret"])
    assert secret["stringData"][grafana["admin"]["passwordKey"]] == GRAFANA_PASSWORD
    assert GRAFANA_PASSWORD not in json.dumps(grafana)


def test_grafana_without_a_password_secret_never_gets_the_charts_default() -> None:
    values = stack_values("prod")
    mocks = run_stack("prod", values, secrets={"grafanaAdminPassword": None})
    grafana = _values(mocks, "kube-prometheus-stack")["grafana"]
    assert grafana["adminPassword"] == ""


def test_adapter_reads_the_prometheus_the_platform_installs(prod: RecordingMocks) -> None:
    stack = _values(prod, "kube-prometheus-stack")
    url = _values(prod, "prometheus-adapter")["prometheus"]["url"]
    assert url == f"http://{stack['fullnameOverride']}-prometheus.monitoring.svc"


def test_issuer_answers_http01_through_the_stacks_gateway(prod: RecordingMocks) -> None:
    issuer = kubernetes_object(prod, "ClusterIssuer", "letsencrypt-prod")["spec"]["acme"]
    assert issuer["email"] == "ops@example.com"
    (solver,) = issuer["solvers"]
    (parent,) = solver["http01"]["gatewayHTTPRoute"]["parentRefs"]
    gateway = kubernetes_object(prod, "Gateway", parent["name"])
    assert gateway["metadata"]["namespace"] == parent["namespace"]
    assert parent["sectionName"] in {listener["name"] for listener in gateway["spec"]["listeners"]}


def test_gateway_class_is_the_one_the_gateway_names(prod: RecordingMocks) -> None:
    gateway = kubernetes_object(prod, "Gateway", "llm-serving")
    gateway_class = kubernetes_object(prod, "GatewayClass", gateway["spec"]["gatewayClassName"])
    assert gateway_class["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"


def test_chart_values_from_the_stack_merge_over_the_stacks_own() -> None:
    registry = {"kube-prometheus-stack": {"grafana": {"image": {"registry": "mirror.example.cn"}}}}
    mocks = run_stack("prod", with_changes(stack_values("prod"), {"platform.chartValues": registry}))
    grafana = _values(mocks, "kube-prometheus-stack")["grafana"]
    assert grafana["image"] == {"registry": "mirror.example.cn"}
    assert grafana["sidecar"]["dashboards"]["enabled"] is True


def test_tencent_endpoint_opens_after_the_node_pools() -> None:
    mocks = run_stack("prod-tencent", stack_values("prod-tencent"))
    (cluster,) = resources(mocks, "tencentcloud:Kubernetes/cluster:Cluster")
    assert "clusterInternet" not in cluster.inputs and "clusterIntranet" not in cluster.inputs
    (endpoint,) = resources(mocks, "tencentcloud:Kubernetes/clusterEndpoint:ClusterEndpoint")
    pools = {f"tencentcloud:Kubernetes/nodePool:NodePool {r.name}"
             for r in resources(mocks, "tencentcloud:Kubernetes/nodePool:NodePool")}
    assert pools and pools <= set(endpoint.depends_on)
    assert endpoint.inputs["clusterIntranet"] is True


def test_operator_only_monitoring_stack_keeps_prometheus_and_drops_the_rest() -> None:
    mocks = run_stack("prod", with_changes(stack_values("prod"), {"platform.prometheusStack": "operator"}))
    stack = _values(mocks, "kube-prometheus-stack")
    assert [key for key in ("grafana", "alertmanager", "nodeExporter") if stack[key]["enabled"]] == []
    assert stack["prometheus"]["prometheusSpec"]["serviceMonitorSelector"]
    assert "prometheus-adapter" in {r.inputs["name"] for r in resources(mocks, HELM_RELEASE)}
