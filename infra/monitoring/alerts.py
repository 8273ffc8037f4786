"""Alerting rules over the recorded series, thresholds from the stack config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inference import metrics
from infra.config import AlertThresholds
from infra.monitoring import recording
from infra.monitoring.promql import gauge, quantile, selector
from infra.monitoring.service import MonitoredService

# kube-state-metrics' series: the replica counts the server itself cannot know.
KSM_HPA_CURRENT_REPLICAS = "kube_horizontalpodautoscaler_status_current_replicas"
KSM_HPA_MAX_REPLICAS = "kube_horizontalpodautoscaler_spec_max_replicas"
KSM_DEPLOYMENT_AVAILABLE = "kube_deployment_status_replicas_available"
# Prometheus' own per-target health series.
SCRAPE_UP = "up"

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class AlertRule:
    alert: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str

    def as_rule(self) -> dict[str, object]:
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def _p95(bucket_rates: str) -> str:
    return quantile(0.95, bucket_rates, ("namespace",))


def _queue_growing_at_max_replicas(service: MonitoredService, autoscaler: str) -> str:
    hpa = {"namespace": service.namespace, "horizontalpodautoscaler": autoscaler}
    at_max = (
        f"{selector(KSM_HPA_CURRENT_REPLICAS, hpa)}"
        f" >= on (namespace, horizontalpodautoscaler) {selector(KSM_HPA_MAX_REPLICAS, hpa)}"
    )
    waiting = recording.REQUESTS_WAITING
    return (
        f"deriv({waiting}[{recording.WINDOW}]) > 0 and on (namespace) {waiting} > 0"
        f" and on (namespace) ({at_max})"
    )


def alert_rules(service: MonitoredService, thresholds: AlertThresholds) -> list[AlertRule]:
    ns = {"namespace": service.namespace}
    deployment = {**ns, "deployment": service.deployment}
    sustained = thresholds.sustained_for

    def per_pod(spec: metrics.MetricSpec) -> str:
        return selector(gauge(spec), {**service.job_matcher, **ns})

    rules = [
        AlertRule(
            "LLMServingHighErrorRate",
            f"{selector(recording.API_ERROR_RATIO, ns)} > {thresholds.error_rate}",
            sustained, "critical",
            "LLM API error rate high",
            f"More than {thresholds.error_rate:.0%} of API requests in {{{{ $labels.namespace }}}}"
            f" failed with a 5xx for {sustained}.",
        ),
        AlertRule(
            "LLMServingHighLatency",
            f"{_p95(selector(recording.API_LATENCY_BUCKET_RATE, ns))} > {thresholds.p95_latency_seconds}",
            sustained, "warning",
            "LLM API p95 latency high",
            f"p95 API latency in {{{{ $labels.namespace }}}} is above {thresholds.p95_latency_seconds}s.",
        ),
        AlertRule(
            "LLMServingTimeToFirstTokenSLO",
            f"{_p95(selector(recording.TTFT_BUCKET_RATE, ns))} > {thresholds.ttft_p95_seconds}",
            sustained, "warning",
            "Time to first token over its objective",
            f"p95 time to first token in {{{{ $labels.namespace }}}} is above the"
            f" {thresholds.ttft_p95_seconds}s objective.",
        ),
        AlertRule(
            "LLMServingDeviceMemoryHigh",
            f"{selector(recording.DEVICE_MEMORY_RATIO, ns)} > {thresholds.device_memory_ratio}",
            sustained, "warning",
            "Device memory nearly full",
            f"{{{{ $labels.pod }}}} uses more than {thresholds.device_memory_ratio:.0%} of"
            " {{ $labels.device }} memory.",
        ),
        AlertRule(
            "LLMServingKVCacheNearlyFull",
            f"max by (namespace, pod) ({per_pod(metrics.KV_CACHE_USAGE)})"
            f" > {thresholds.kv_cache_usage_ratio}",
            sustained, "warning",
            "KV cache nearly full",
            f"{{{{ $labels.pod }}}} has more than {thresholds.kv_cache_usage_ratio:.0%} of its KV cache"
            " in use; new requests wait and running ones may be preempted.",
        ),
        AlertRule(
            "LLMServingRequestsQueued",
            f"max by (namespace, pod) ({per_pod(metrics.REQUESTS_WAITING)}) > {thresholds.requests_waiting}",
            sustained, "warning",
            "Requests queue up on a replica",
            f"More than {thresholds.requests_waiting:g} requests wait for admission on"
            " {{ $labels.pod }}.",
        ),
        AlertRule(
            "LLMServingNoReadyReplica",
            # The second clause covers a stack without kube-state-metrics and a Deployment that is gone.
            f"{selector(KSM_DEPLOYMENT_AVAILABLE, deployment)} < 1"
            f" or absent({selector(SCRAPE_UP, service.job_matcher)} == 1)",
            thresholds.outage_for, "critical",
            "No ready LLM server replica",
            f"Deployment {service.deployment} in {service.namespace} has no available replica"
            " or no server answers scrapes.",
        ),
    ]
    if service.autoscaler is not None:
        rules.append(AlertRule(
            "LLMServingQueueGrowingAtMaxReplicas",
            _queue_growing_at_max_replicas(service, service.autoscaler),
            sustained, "warning",
            "Requests queue up with no replica left to add",
            f"Requests waiting in {service.namespace} keep growing while {service.autoscaler}"
            " runs at its maximum replicas.",
        ))
    return rules
