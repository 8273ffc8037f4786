"""Keys of monitoring (scrape, rules, alerts, dashboard) and logging (the agent and its sink)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.config.base import ComputeResources, DnsLabel, PinnedImage, PrometheusDuration, Section


class AlertThresholds(Section):
    """When each generated alert fires; ratios are fractions (0.1 is 10%)."""

    error_rate: float = Field(0.1, gt=0, le=1, description="5xx share of API requests.")
    p95_latency_seconds: float = Field(2.0, gt=0, description="p95 of API request latency.")
    ttft_p95_seconds: float = Field(1.0, gt=0, description="Objective for p95 time to first token.")
    device_memory_ratio: float = Field(0.9, gt=0, le=1)
    kv_cache_usage_ratio: float = Field(0.95, gt=0, le=1)
    requests_waiting: float = Field(32, gt=0, description="Requests queued per pod.")
    sustained_for: PrometheusDuration = Field("5m", description="How long a breach lasts before it alerts.")
    outage_for: PrometheusDuration = Field("2m", description="How long no replica is ready before it alerts.")


class MonitoringConfig(Section):
    enabled: bool = True
    mode: Literal["operator", "scrape-config"] = Field(
        "operator", description="operator: ServiceMonitor + PrometheusRule; scrape-config: a plain ConfigMap."
    )
    scrape_interval_seconds: int = Field(15, ge=1, le=300)
    alerts: AlertThresholds = AlertThresholds()
    operator_labels: dict[str, str] = Field(
        default_factory=lambda: {"release": "kube-prometheus-stack"},
        description="Labels the Prometheus resource selects ServiceMonitors and PrometheusRules by; the "
        "Prometheus the platform layer installs selects exactly these.",
    )
    dashboard_namespace: DnsLabel | None = Field(
        None, description="Namespace Grafana's dashboard sidecar watches; none: the app's namespace."
    )
    prometheus_service_account: DnsLabel = Field(
        "prometheus",
        description="scrape-config mode: service account of the Prometheus in network.prometheusNamespace; "
        "it may discover the server's pods.",
    )


class ElasticsearchConfig(Section):
    host: str = "elasticsearch.logging.svc.cluster.local"
    port: int = Field(9200, ge=1, le=65535)
    index: str = "llm-serving"


class LoggingConfig(Section):
    enabled: bool = True
    agent: Literal["fluent-bit"] = "fluent-bit"
    image: PinnedImage = "cr.fluentbit.io/fluent/fluent-bit:3.1.9"
    requests: ComputeResources = ComputeResources(cpu="50m", memory="64Mi")
    limits: ComputeResources = ComputeResources(cpu="500m", memory="256Mi")
    elasticsearch: ElasticsearchConfig = ElasticsearchConfig()
    retention_days: int = Field(30, ge=1, le=3650)


