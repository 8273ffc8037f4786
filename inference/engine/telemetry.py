"""The engine's side of the metric catalog: queue and KV gauges, token latencies, counters."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import torch
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from inference import metrics
from inference.engine.sequence import Sequence

_DEVICE_MEMORY_REFRESH_SECONDS = 1.0


def device_memory(device: torch.device) -> tuple[int, int]:
    """(used, total) bytes: the accelerator's when there is one, else this process's resident set."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total - free, total
    page_size = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * page_size, os.sysconf("SC_PHYS_PAGES") * page_size


class EngineTelemetry:
    def __init__(
        self, collectors: dict[str, MetricWrapperBase] | None, device: torch.device, base_model: str
    ) -> None:
        # Without collectors from the server, metrics go to a private registry nobody scrapes.
        self._collectors = (
            collectors if collectors is not None else metrics.build_collectors(CollectorRegistry())
        )
        self._device = device
        self._base_model = base_model
        self._memory_refreshed_at = float("-inf")
        self._worker_memory: Callable[[], list[tuple[int, int]]] | None = None
        self._children: dict[tuple[str, str], MetricWrapperBase] = {}

    def _metric(self, spec: metrics.MetricSpec) -> MetricWrapperBase:
        return self._collectors[spec.name]

    def model_loaded(self, model: str, dtype: torch.dtype, quantization: str) -> None:
        labels = {"model": model, "dtype": str(dtype).removeprefix("torch."), "device": self._device.type}
        self._metric(metrics.MODEL_INFO).labels(**labels, quantization=quantization).set(1)

    def ranks_up(self, count: Callable[[], int]) -> None:
        # Read at scrape time: a rank that dies while the engine loop waits is seen at the next scrape.
        self._metric(metrics.TENSOR_PARALLEL_RANKS_UP).set_function(count)

    def worker_memory(self, readings: Callable[[], list[tuple[int, int]]]) -> None:
        """(used, total) bytes of the devices of ranks 1, 2, ..., exported beside rank 0's."""
        self._worker_memory = readings

    def rejected(self, reason: str) -> None:
        self._metric(metrics.REQUESTS_REJECTED).labels(reason=reason).inc()

    def cancelled(self) -> None:
        self._metric(metrics.REQUESTS_CANCELLED).inc()

    def preempted(self, count: int) -> None:
        if count:
            self._metric(metrics.PREEMPTIONS).inc(count)

    def _model_of(self, lora_name: str | None) -> str:
        # Only the base model and loaded adapters reach the engine: the label's values stay few.
        return lora_name or self._base_model

    def _child(self, spec: metrics.MetricSpec, model: str) -> MetricWrapperBase:
        """The `model`-labelled series of a metric, looked up once: `labels()` costs microseconds, paid
        per token at every step otherwise."""
        key = (spec.name, model)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric(spec).labels(model=model)
        return child

    def tokens(self, seqs: Iterable[Sequence], now: float) -> None:
        """A step gave each of `seqs` one token at `now`."""
        # Per adapter (None: the base model), the inter-token latencies of the step's later tokens.
        gaps: dict[str | None, list[float]] = {}
        for seq in seqs:
            if seq.first_token_time is None:
                self._first_token(seq, now)
            else:
                latencies = gaps.get(seq.lora_name)
                if latencies is None:
                    latencies = gaps[seq.lora_name] = []
                latencies.append(now - seq.last_token_time)
            seq.last_token_time = now
        for lora_name, latencies in gaps.items():
            model = self._model_of(lora_name)
            self._child(metrics.GENERATION_TOKENS, model).inc(len(latencies))
            self._child(metrics.INTER_TOKEN_LATENCY, model).observe_all(latencies)

    def _first_token(self, seq: Sequence, now: float) -> None:
        seq.first_token_time = now
        model = self._model_of(seq.lora_name)
        self._child(metrics.GENERATION_TOKENS, model).inc()
        self._child(metrics.TIME_TO_FIRST_TOKEN, model).observe(now - seq.arrival_time)
        self._child(metrics.PROMPT_TOKENS, model).inc(seq.num_prompt_tokens)
        self._metric(metrics.PREFIX_CACHE_QUERIES).inc(seq.num_prompt_tokens)
        self._metric(metrics.PREFIX_CACHE_HITS).inc(seq.num_cached_tokens or 0)

    def finished(self, seq: Sequence, now: float) -> None:
        labels = {"model": self._model_of(seq.lora_name), "finish_reason": seq.finish_reason or "abort"}
        self._metric(metrics.REQUEST_LATENCY).labels(**labels).observe(now - seq.arrival_time)

    def load(self, running: int, waiting: int, kv_usage: float) -> None:
        self._metric(metrics.REQUESTS_RUNNING).set(running)
        self._metric(metrics.REQUESTS_WAITING).set(waiting)
        self._metric(metrics.KV_CACHE_USAGE).set(kv_usage)
        now = time.monotonic()
        if now - self._memory_refreshed_at >= _DEVICE_MEMORY_REFRESH_SECONDS:
            self._memory_refreshed_at = now
            readings = [device_memory(self._device)]
            if self._worker_memory is not None:
                readings += self._worker_memory()
            for rank, (used, total) in enumerate(readings):
                # Split over ranks, each device is named with its index (the rank's): cuda:0, cuda:1, ...
                device = self._device.type if self._worker_memory is None else f"{self._device.type}:{rank}"
                self._metric(metrics.DEVICE_MEMORY_USED).labels(device=device).set(used)
                self._metric(metrics.DEVICE_MEMORY_TOTAL).labels(device=device).set(total)
