"""Every Helm chart the platform layer installs, pinned, in one table: upgrading an add-on is one line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    chart: str  # the chart's name in `repository`, or a full oci:// reference
    version: str
    namespace: str  # the monitoring charts go to network.prometheusNamespace instead
    repository: str | None = None  # None: `chart` is an OCI reference


COMMUNITY = "https://prometheus-community.github.io/helm-charts"

CHARTS: dict[str, Chart] = {
    "envoy-gateway": Chart("oci://docker.io/envoyproxy/gateway-helm", "v1.6.5", "envoy-gateway-system"),
    "cert-manager": Chart("cert-manager", "v1.18.2", "cert-manager", "https://charts.jetstack.io"),
    "prometheus-operator-crds": Chart("prometheus-operator-crds", "24.0.2", "monitoring", COMMUNITY),
    "kube-prometheus-stack": Chart("kube-prometheus-stack", "77.11.1", "monitoring", COMMUNITY),
    "prometheus-adapter": Chart("prometheus-adapter", "4.13.0", "monitoring", COMMUNITY),
    "metrics-server": Chart(
        "metrics-server", "3.13.0", "kube-system", "https://kubernetes-sigs.github.io/metrics-server/"
    ),
    "nvidia-device-plugin": Chart(
        "nvidia-device-plugin", "0.17.4", "kube-system", "https://nvidia.github.io/k8s-device-plugin"
    ),
    "aws-load-balancer-controller": Chart(
        "aws-load-balancer-controller", "1.13.4", "kube-system", "https://aws.github.io/eks-charts"
    ),
    "cluster-autoscaler": Chart(
        "cluster-autoscaler", "9.46.6", "kube-system", "https://kubernetes.github.io/autoscaler"
    ),
}
