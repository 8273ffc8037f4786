"""Typed values of each chart the platform layer installs: only the keys we set, each with its shape.

Key names follow each chart's values.yaml at the version pinned in `infra.charts.CHARTS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import pulumi

from infra.components.autoscaling import POD_METRICS
from infra.monitoring.adapter import adapter_rules

# kube-prometheus-stack names its objects after this, so the adapter can find Prometheus' Service.
PROMETHEUS_FULLNAME = "kube-prometheus-stack"
PROMETHEUS_PORT = 9090
GRAFANA_ADMIN_SECRET = "grafana-admin"
GRAFANA_USER_KEY = "admin-user"
GRAFANA_PASSWORD_KEY = "admin-password"


@dataclass(frozen=True)
class MonitoringStack:
    """The monitoring stack as the serving stack's monitoring component sees it: one source for both."""

    namespace: str
    selector_labels: Mapping[str, str]  # what Prometheus selects ServiceMonitors and PrometheusRules by
    dashboard_label: tuple[str, str]  # what Grafana's dashboard sidecar looks for
    grafana: bool
    full: bool  # kube-prometheus-stack as it comes; else the operator and one Prometheus only
    grafana_admin_password: pulumi.Input[str] | None
    # The Secret holding it, which the platform creates: the chart reads it, the values never hold it.
    grafana_admin_secret: str | None = None


class CertManagerValues(TypedDict):
    crds: dict[str, bool]
    config: dict[str, Any]


def cert_manager(gateway_api: bool) -> CertManagerValues:
    return {
        "crds": {"enabled": True},
        "config": {
            "apiVersion": "controller.config.cert-manager.io/v1alpha1",
            "kind": "ControllerConfiguration",
            "enableGatewayAPI": gateway_api,
        },
    }


class KubePrometheusStackValues(TypedDict):
    fullnameOverride: str
    crds: dict[str, bool]
    prometheus: dict[str, Any]
    grafana: dict[str, Any]
    alertmanager: dict[str, bool]
    nodeExporter: dict[str, bool]
    defaultRules: dict[str, bool]


def kube_prometheus_stack(stack: MonitoringStack) -> KubePrometheusStackValues:
    selector = {"matchLabels": dict(stack.selector_labels)}
    label, value = stack.dashboard_label
    grafana: dict[str, Any] = {
        "enabled": stack.grafana and stack.full,
        "sidecar": {"dashboards": {
            "enabled": True, "label": label, "labelValue": value, "searchNamespace": "ALL",
        }},
    }
    if stack.grafana_admin_secret is not None:
        grafana["admin"] = {
            "existingSecret": stack.grafana_admin_secret, "userKey": GRAFANA_USER_KEY,
            "passwordKey": GRAFANA_PASSWORD_KEY,
        }
    else:
        # Never the chart's well-known default: empty makes the Grafana chart generate a random password
        # into its Secret.
        grafana["adminPassword"] = ""
    return {
        "fullnameOverride": PROMETHEUS_FULLNAME,
        # The CRDs come from their own release, applied first and kept on uninstall.
        "crds": {"enabled": False},
        "prometheus": {"prometheusSpec": {
            "serviceMonitorSelector": selector,
            "serviceMonitorNamespaceSelector": {},
            "ruleSelector": selector,
            "ruleNamespaceSelector": {},
        }},
        "grafana": grafana,
        "alertmanager": {"enabled": stack.full},
        "nodeExporter": {"enabled": stack.full},
        "defaultRules": {"create": stack.full},
    }


class PrometheusAdapterValues(TypedDict):
    prometheus: dict[str, Any]
    rules: dict[str, Any]


def prometheus_url(stack: MonitoringStack) -> str:
    return f"http://{PROMETHEUS_FULLNAME}-prometheus.{stack.namespace}.svc"


def prometheus_adapter(stack: MonitoringStack) -> PrometheusAdapterValues:
    return {
        "prometheus": {"url": prometheus_url(stack), "port": PROMETHEUS_PORT},
        # Only the rules the HPA uses, generated from the metric catalog.
        "rules": {"default": False, "custom": adapter_rules(POD_METRICS)},
    }


class DevicePluginValues(TypedDict):
    tolerations: list[dict[str, str]]
    affinity: dict[str, Any]


def device_plugin(
    node_selector: Mapping[str, str], tolerations: Sequence[Mapping[str, str]]
) -> DevicePluginValues:
    """On the GPU pool's nodes only: its label replaces the chart's default (node feature discovery) terms."""
    terms = [{"matchExpressions": [
        {"key": key, "operator": "In", "values": [value]} for key, value in node_selector.items()
    ]}]
    return {
        "tolerations": [dict(t) for t in tolerations],
        "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
        }},
    }


def envoy_proxy(load_balancer_annotations: Mapping[str, str]) -> dict[str, Any]:
    """The EnvoyProxy spec: the proxies' Service is the stack's one public load balancer."""
    return {"provider": {"type": "Kubernetes", "kubernetes": {"envoyService": {
        "type": "LoadBalancer",
        "annotations": dict(load_balancer_annotations),
        # Keep the client's address and skip the extra hop between nodes.
        "externalTrafficPolicy": "Local",
    }}}}
