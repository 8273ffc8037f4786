"""Plain Prometheus configuration, for clusters without the operator and for local stacks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from infra.monitoring.service import MonitoredService

METRICS_PATH = "/metrics"


def _meta_label(label: str) -> str:
    # Kubernetes service discovery exposes pod labels with every character outside [a-zA-Z0-9_]
    # replaced by an underscore.
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _copy(source: str, target: str) -> dict[str, object]:
    return {"action": "replace", "source_labels": [source], "target_label": target}


def kubernetes_pod_scrape(
    service: MonitoredService, pod_labels: Mapping[str, str], port_name: str, interval: str
) -> dict[str, object]:
    """A scrape job that discovers the server's pods and labels their series with namespace and pod,
    as the operator's ServiceMonitor does, so the same rules and dashboard work in both modes."""
    keep_pods = [
        {"action": "keep", "source_labels": [_meta_label(label)], "regex": re.escape(value)}
        for label, value in sorted(pod_labels.items())
    ]
    return {
        "job_name": service.job,
        "scrape_interval": interval,
        "metrics_path": METRICS_PATH,
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [service.namespace]}}],
        "relabel_configs": [
            *keep_pods,
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": re.escape(port_name)},
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running"},
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_pod_name", "pod"),
        ],
    }


def static_scrape(service: MonitoredService, targets: Iterable[str], interval: str) -> dict[str, object]:
    """A scrape job over fixed `host:port` targets: each host stands in for a pod."""
    return {
        "job_name": service.job,
        "scrape_interval": interval,
        "metrics_path": METRICS_PATH,
        "static_configs": [{"targets": list(targets), "labels": {"namespace": service.namespace}}],
        "relabel_configs": [
            {"action": "replace", "source_labels": ["__address__"], "regex": "(.+?)(?::[0-9]+)?",
             "target_label": "pod"},
        ],
    }


def prometheus_config(
    scrape_configs: Iterable[Mapping[str, object]], rule_files: Iterable[str], interval: str
) -> dict[str, object]:
    """A whole `prometheus.yml`."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": list(scrape_configs),
    }
