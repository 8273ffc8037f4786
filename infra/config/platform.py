"""Keys of the platform layer: what the stack installs on the cluster before the serving stack.

Each add-on key is true or false; left unset it follows whether the stack creates its cluster: a
created cluster gets everything the serving stack runs on, an existing cluster nothing unless asked.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from infra.config.base import Section

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

Addon = Literal[
    "gateway", "cert_manager", "prometheus", "metrics_server", "metrics_adapter", "device_plugin",
    "load_balancer_controller", "node_autoscaler",
]


class PlatformConfig(Section):
    gateway: bool | None = Field(
        None, description="Envoy Gateway, the Gateway API implementation the Gateway and HTTPRoute use."
    )
    cert_manager: bool | None = Field(None, description="cert-manager and the stack's ACME ClusterIssuer.")
    prometheus: bool | None = Field(
        None, description="The prometheus-operator CRDs and kube-prometheus-stack (Prometheus, Grafana)."
    )
    prometheus_stack: Literal["full", "operator"] = Field(
        "full",
        description="full: kube-prometheus-stack as it comes (Alertmanager, node exporter, default rules); "
        "operator: the operator and one Prometheus (with kube-state-metrics, which the alerts read).",
    )
    grafana: bool = Field(True, description="Grafana with its dashboard sidecar (kube-prometheus-stack).")
    metrics_server: bool | None = Field(None, description="metrics-server: CPU and memory for the HPA.")
    metrics_adapter: bool | None = Field(
        None, description="prometheus-adapter: the HPA's custom metric, its rule made from the catalog."
    )
    device_plugin: bool | None = Field(
        None, description="NVIDIA device plugin, on clouds whose GPU nodes lack it (EKS, TKE)."
    )
    load_balancer_controller: bool | None = Field(
        None, description="AWS Load Balancer Controller with its own IRSA role (AWS only)."
    )
    node_autoscaler: bool | None = Field(
        None, description="Node autoscaling of the GPU pool: Cluster Autoscaler (EKS), ACK's, TKE's."
    )
    acme_email: str | None = Field(
        None, pattern=r"^[^@\s]+@[^@\s]+$", description="ACME account e-mail of the ClusterIssuer."
    )
    acme_server: str = Field(LETSENCRYPT, description="ACME directory URL (e.g. Let's Encrypt staging).")

    chart_values: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Extra Helm values per chart (a key of the chart table), merged over the stack's own: "
        "e.g. image registries the nodes can reach.",
    )

    def installs(self, addon: Addon, cluster_created: bool, needed: bool = True) -> bool:
        """Whether the stack installs `addon`: as set, or, unset, when it creates its cluster and the
        serving stack needs it."""
        chosen: bool | None = getattr(self, addon)
        return cluster_created and needed if chosen is None else chosen
