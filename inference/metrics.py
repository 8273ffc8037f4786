"""The metric catalog: every metric the server exports, by name, type, labels and buckets.

This module is the seam between the two halves of the project. The server builds its Prometheus
collectors from it; `infra/` generates dashboards, alert rules and autoscaling queries from the
same names. It imports no torch so that infrastructure code can use it on a machine without it.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.samples import Sample


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def series_names(self) -> tuple[str, ...]:
        """The time-series names Prometheus stores for this metric."""
        if self.kind is Kind.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


# Latencies from a millisecond (a decode step on a GPU) to minutes (a long generation).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)

HTTP_REQUESTS = MetricSpec(
    "http_requests_total", Kind.COUNTER, "HTTP requests by method, route and status code.",
    ("method", "route", "status"),
)
HTTP_REQUEST_DURATION = MetricSpec(
    "http_request_duration_seconds", Kind.HISTOGRAM, "HTTP request latency, headers to last byte.",
    ("method", "route"), _LATENCY_BUCKETS,
)
REQUESTS_RUNNING = MetricSpec(
    "llm_requests_running", Kind.GAUGE, "Sequences in the running batch of the engine."
)
REQUESTS_WAITING = MetricSpec(
    "llm_requests_waiting", Kind.GAUGE, "Requests queued for admission into the running batch."
)
KV_CACHE_USAGE = MetricSpec(
    "llm_kv_cache_usage_ratio", Kind.GAUGE, "Fraction of KV cache blocks in use, 0 to 1."
)
# `model` is the served model id a request named: the base model's or one of its LoRA adapters'.
TIME_TO_FIRST_TOKEN = MetricSpec(
    "llm_time_to_first_token_seconds", Kind.HISTOGRAM, "Time from arrival to the first generated token.",
    ("model",), _LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = MetricSpec(
    "llm_inter_token_latency_seconds", Kind.HISTOGRAM, "Time between consecutive generated tokens.",
    ("model",), _TOKEN_LATENCY_BUCKETS,
)
REQUEST_LATENCY = MetricSpec(
    "llm_request_duration_seconds", Kind.HISTOGRAM, "End-to-end generation latency, arrival to finish.",
    ("model", "finish_reason"), _LATENCY_BUCKETS,
)
PROMPT_TOKENS = MetricSpec(
    "llm_prompt_tokens_total", Kind.COUNTER, "Prompt tokens processed (prefill).", ("model",)
)
GENERATION_TOKENS = MetricSpec(
    "llm_generation_tokens_total", Kind.COUNTER, "Tokens generated (decode).", ("model",)
)
REQUESTS_REJECTED = MetricSpec(
    "llm_requests_rejected_total", Kind.COUNTER, "Requests refused before admission, by reason.",
    ("reason",),
)


class RejectionReason(StrEnum):
    """The `reason` label of REQUESTS_REJECTED; each refusal is counted once, where it is decided."""

    LOADING = "loading"  # the model is still loading
    DRAINING = "draining"  # shutting down, finishing what it has
    FAILED = "failed"  # the model did not load
    ENGINE_STOPPED = "engine_stopped"  # the engine loop is gone
    QUEUE_FULL = "queue_full"  # counted by the engine, which owns the queue
    PROMPT_TOO_LONG = "prompt_too_long"
REQUESTS_CANCELLED = MetricSpec(
    "llm_requests_cancelled_total", Kind.COUNTER, "Requests cancelled by a client disconnect or abort."
)
PREEMPTIONS = MetricSpec(
    "llm_preemptions_total", Kind.COUNTER, "Sequences preempted for recompute because KV memory ran out."
)
PREFIX_CACHE_QUERIES = MetricSpec(
    "llm_prefix_cache_queries_total", Kind.COUNTER,
    "Prompt tokens of admitted requests, each looked up in the prefix cache (with it off, none hit).",
)
PREFIX_CACHE_HITS = MetricSpec(
    "llm_prefix_cache_hits_total", Kind.COUNTER,
    "Prompt tokens found in the prefix cache (their KV reused, not computed).",
)
DEVICE_MEMORY_USED = MetricSpec(
    "llm_device_memory_used_bytes", Kind.GAUGE, "Accelerator (or host) memory in use by the server.",
    ("device",),
)
DEVICE_MEMORY_TOTAL = MetricSpec(
    "llm_device_memory_total_bytes", Kind.GAUGE, "Accelerator (or host) memory available to the server.",
    ("device",),
)
TENSOR_PARALLEL_RANKS_UP = MetricSpec(
    "llm_tensor_parallel_ranks_up", Kind.GAUGE,
    "Processes holding a part of the model that are alive, the server's own included (1 without tensor "
    "parallelism); below --tensor-parallel-size the server is not ready and exits.",
)
MODEL_INFO = MetricSpec(
    "llm_model_info", Kind.GAUGE, "Always 1; labels describe the served model.",
    ("model", "dtype", "device", "quantization"),
)
# A stall of the API server's event loop holds every stream at once, whatever held it (a garbage
# collection, a long prompt's validation, a chat template), and shows in no token latency: those are
# measured by the engine.
EVENT_LOOP_LAG = MetricSpec(
    "llm_event_loop_lag_seconds", Kind.HISTOGRAM,
    "How late the API server's event loop ran a timer it sets every 0.1 s: time it served no stream.",
    (), (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

CATALOG: tuple[MetricSpec, ...] = (
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    KV_CACHE_USAGE,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    REQUEST_LATENCY,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    REQUESTS_REJECTED,
    REQUESTS_CANCELLED,
    PREEMPTIONS,
    PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS,
    DEVICE_MEMORY_USED,
    DEVICE_MEMORY_TOTAL,
    TENSOR_PARALLEL_RANKS_UP,
    MODEL_INFO,
    EVENT_LOOP_LAG,
)


# Label values -----------------------------------------------------------------------------------
# Every label of every metric has a bounded set of values, so that no client (made-up HTTP methods,
# adapter names, paths) can create time series without bound. A value outside its label's domain is
# recorded as OTHER.

OTHER = "other"


@dataclass(frozen=True)
class LabelDomain:
    """The values a label may take: a known set, or, where the set is open (model ids, routes), the
    first `max_values` distinct values seen."""

    values: frozenset[str] | None = None
    max_values: int = 32


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

LABEL_DOMAINS: dict[str, LabelDomain] = {
    "method": LabelDomain(_HTTP_METHODS),
    "route": LabelDomain(max_values=64),  # route templates; paths that match none are "unmatched"
    "status": LabelDomain(frozenset(str(code) for code in range(100, 600))),
    "finish_reason": LabelDomain(max_values=8),
    "reason": LabelDomain(frozenset(RejectionReason)),
    "device": LabelDomain(max_values=8),
    "model": LabelDomain(max_values=64),
    "dtype": LabelDomain(max_values=8),
    "quantization": LabelDomain(max_values=8),
}


class _Fold:
    """Maps one label's values into its domain; shared by the threads that record metrics."""

    def __init__(self, domain: LabelDomain) -> None:
        self._domain = domain
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if self._domain.values is not None:
            return value if value in self._domain.values else OTHER
        with self._lock:
            if value in self._seen or len(self._seen) < self._domain.max_values:
                self._seen.add(value)
                return value
        return OTHER


class _BoundedLabels(MetricWrapperBase):
    """A collector whose `labels()` folds each value into its label's domain before making a child."""

    _folds: dict[str, _Fold]

    def labels(self, *values: Any, **named: Any) -> Any:
        if values:
            named = dict(zip(self._labelnames, values, strict=True))
        return super().labels(**{name: self._folds[name](str(value)) for name, value in named.items()})


class BoundedCounter(_BoundedLabels, Counter):
    pass


class BoundedGauge(_BoundedLabels, Gauge):
    pass


class BoundedHistogram(_BoundedLabels, Histogram):
    def observe_all(self, amounts: Sequence[float]) -> None:
        """`observe` each of `amounts`, counted by bucket: a decode step's inter-token latencies, one
        per running request, cost one increment per bucket they reach instead of a call each (whose
        linear search over the buckets made it the larger part of a step's metrics time)."""
        self._raise_if_not_observable()
        bounds = self._upper_bounds
        # A step's latencies are mostly equal (its decodes all followed the step before): a search per value.
        reached: collections.Counter[int] = collections.Counter()
        for amount, count in collections.Counter(amounts).items():
            reached[bisect.bisect_left(bounds, amount)] += count
        for bucket, count in reached.items():
            self._buckets[bucket].inc(count)
        self._sum.inc(sum(amounts))


def series_names() -> frozenset[str]:
    """Every series name a PromQL query may use against this server."""
    return frozenset(series for spec in CATALOG for series in spec.series_names())


def build_collectors(registry: CollectorRegistry) -> dict[str, MetricWrapperBase]:
    """One prometheus_client collector per catalog entry, registered in `registry`, keyed by name."""
    collectors: dict[str, MetricWrapperBase] = {}
    for spec in CATALOG:
        unbounded = [label for label in spec.labels if label not in LABEL_DOMAINS]
        if unbounded:
            raise ValueError(f"{spec.name}: labels {unbounded} have no entry in LABEL_DOMAINS")
        # prometheus_client appends `_total` to counters itself.
        name = spec.name.removesuffix("_total") if spec.kind is Kind.COUNTER else spec.name
        collector: _BoundedLabels
        if spec.kind is Kind.COUNTER:
            collector = BoundedCounter(name, spec.help, spec.labels, registry=registry)
        elif spec.kind is Kind.GAUGE:
            collector = BoundedGauge(name, spec.help, spec.labels, registry=registry)
        else:
            collector = BoundedHistogram(
                name, spec.help, spec.labels, registry=registry, buckets=spec.buckets
            )
        collector._folds = {label: _Fold(LABEL_DOMAINS[label]) for label in spec.labels}
        collectors[spec.name] = collector
    return collectors


class MergedFamilies:
    """A registry's families and those collected in another process (the engine's), one family per
    name, as `generate_latest` takes them. Each series is written in one process, or counts events of
    both (rejections): values of the same series add up; a `_created` time is the earliest."""

    def __init__(self, registry: CollectorRegistry, others: Iterable[Metric]) -> None:
        self._registry = registry
        self._others = others

    def collect(self) -> list[Metric]:
        merged: dict[str, Metric] = {}
        series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        for family in itertools.chain(self._registry.collect(), self._others):
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                series[family.name] = {}
            samples = series[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = samples.get(key)
                if seen is None:
                    samples[key] = sample
                elif sample.name.endswith("_created"):
                    samples[key] = min(seen, sample, key=lambda kept: kept.value)
                else:
                    samples[key] = seen._replace(value=seen.value + sample.value)
        for name, family in merged.items():
            family.samples = list(series[name].values())
        return list(merged.values())
