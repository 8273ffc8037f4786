"""Recording rules for the queries that alerts and dashboard panels share.

Rates over histogram buckets are the expensive part of every latency query; they are recorded once
per (namespace, pod) so that a panel filtered to one pod and an alert aggregated per namespace read
the same precomputed series. Names follow Prometheus' `level:metric:operations` convention.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference import metrics
from infra.monitoring.promql import MatcherValue, bucket, counter, gauge, selector
from infra.monitoring.service import MonitoredService

WINDOW = "5m"
# Only the OpenAI routes are the service's traffic: probes answer 503 while a model loads and
# scrapes are frequent and fast, and either would skew error ratios and latency percentiles.
API_ROUTES: MatcherValue = ("=~", "/v1/.*")


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str

    def as_rule(self) -> dict[str, str]:
        return {"record": self.record, "expr": self.expr}


def _rated(level: str, series: str) -> str:
    return f"{level}:{series.removesuffix('_total')}:rate{WINDOW}"


_REQUESTS = counter(metrics.HTTP_REQUESTS)
API_REQUEST_RATE = _rated("namespace_pod_status", _REQUESTS)
API_ERROR_RATIO = f"namespace:{_REQUESTS.removesuffix('_total')}_errors:ratio_rate{WINDOW}"
API_LATENCY_BUCKET_RATE = _rated("namespace_pod", bucket(metrics.HTTP_REQUEST_DURATION))
# Per served model id too (the base or a LoRA adapter), so the dashboard splits traffic and latency by it.
TTFT_BUCKET_RATE = _rated("namespace_pod_model", bucket(metrics.TIME_TO_FIRST_TOKEN))
INTER_TOKEN_BUCKET_RATE = _rated("namespace_pod", bucket(metrics.INTER_TOKEN_LATENCY))
PROMPT_TOKEN_RATE = _rated("namespace_pod", counter(metrics.PROMPT_TOKENS))
GENERATION_TOKEN_RATE = _rated("namespace_pod_model", counter(metrics.GENERATION_TOKENS))
REQUESTS_WAITING = f"namespace:{gauge(metrics.REQUESTS_WAITING)}:sum"
_DEVICE_MEMORY = gauge(metrics.DEVICE_MEMORY_USED).removesuffix("_used_bytes")
DEVICE_MEMORY_RATIO = f"namespace_pod_device:{_DEVICE_MEMORY}:ratio"

_PER_POD = "namespace, pod"
_PER_POD_BUCKET = "namespace, pod, le"
_PER_POD_MODEL = "namespace, pod, model"
_PER_POD_MODEL_BUCKET = "namespace, pod, model, le"
_PER_DEVICE = "namespace, pod, device"


def _rate_sum(series: str, by: str, matchers: dict[str, MatcherValue]) -> str:
    return f"sum by ({by}) (rate({selector(series, matchers)}[{WINDOW}]))"


def recording_rules(service: MonitoredService) -> list[RecordingRule]:
    """In evaluation order: later rules read series recorded by earlier ones in the same group."""
    job = service.job_matcher
    api = {**job, "route": API_ROUTES}
    server_errors = selector(API_REQUEST_RATE, {"status": ("=~", "5..")})
    by_namespace = f"sum by (namespace) ({API_REQUEST_RATE})"
    used = selector(gauge(metrics.DEVICE_MEMORY_USED), job)
    total = selector(gauge(metrics.DEVICE_MEMORY_TOTAL), job)
    waiting = selector(gauge(metrics.REQUESTS_WAITING), job)
    return [
        RecordingRule(API_REQUEST_RATE, _rate_sum(_REQUESTS, f"{_PER_POD}, status", api)),
        # `or ... * 0` keeps the ratio at 0, rather than absent, while nothing fails.
        RecordingRule(
            API_ERROR_RATIO, f"(sum by (namespace) ({server_errors}) or {by_namespace} * 0) / {by_namespace}"
        ),
        RecordingRule(
            API_LATENCY_BUCKET_RATE, _rate_sum(bucket(metrics.HTTP_REQUEST_DURATION), _PER_POD_BUCKET, api)
        ),
        RecordingRule(
            TTFT_BUCKET_RATE, _rate_sum(bucket(metrics.TIME_TO_FIRST_TOKEN), _PER_POD_MODEL_BUCKET, job)
        ),
        RecordingRule(
            INTER_TOKEN_BUCKET_RATE, _rate_sum(bucket(metrics.INTER_TOKEN_LATENCY), _PER_POD_BUCKET, job)
        ),
        RecordingRule(PROMPT_TOKEN_RATE, _rate_sum(counter(metrics.PROMPT_TOKENS), _PER_POD, job)),
        RecordingRule(
            GENERATION_TOKEN_RATE, _rate_sum(counter(metrics.GENERATION_TOKENS), _PER_POD_MODEL, job)
        ),
        RecordingRule(REQUESTS_WAITING, f"sum by (namespace) ({waiting})"),
        RecordingRule(
            DEVICE_MEMORY_RATIO, f"max by ({_PER_DEVICE}) ({used}) / max by ({_PER_DEVICE}) ({total})"
        ),
    ]
