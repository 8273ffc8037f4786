"""The engine as the API layer sees it: submit a request, iterate its tokens as they come.

`async with AsyncEngine(...) as engine:` starts it and stops it; the app's lifespan, the benchmarks
and the tests all run it that way.

The model loop runs on its own thread, never on the event loop. Each iteration it schedules
under a lock, runs the forward pass without it (so submissions and aborts never wait for the
model), commits the sampled tokens under the lock again and hands them to the event loop with
one `call_soon_threadsafe` per step. LoRA adapters are loaded and unloaded between forward passes.
An error while computing one request's step ends that request with `RequestFailedError`; the
loop and every other request go on.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

from inference import metrics
from inference.config import ServerConfig
from inference.engine.core import EngineCore, EngineStats, RequestFailure, StepOutput
from inference.engine.grammar import CompiledGrammar, GrammarSpec
from inference.engine.request import (
    EngineError,
    EngineNotReadyError,
    GenerationRequest,
    LoraLoadError,
    QueueFullError,
    RequestFailedError,
    UnknownModelError,
)
from inference.engine.sequence import Sequence
from inference.engine.stream import RequestStream, StreamItem
from inference.engine.telemetry import EngineTelemetry
from inference.lora import LoraAdapter, LoraAdapterError
from inference.model_loading import LoadedModel

logger = logging.getLogger(__name__)

# How long the idle loop sleeps between gauge refreshes when nothing wakes it.
_IDLE_POLL_SECONDS = 0.5
_IDLE_CHECK_SECONDS = 0.02
_RANK_DEATH_NOTICE_SECONDS = 2.0
_MAX_RETRY_AFTER_SECONDS = 60
_LATENCY_SMOOTHING = 0.1
_DEAD_RANK_JOIN_SECONDS = 10.0


# Where a request's tokens go: its RequestStream on this process's event loop, or, in an engine process,
# its request id, which `deliver` sends on to the API process.
Sink = RequestStream | str
Deliver = Callable[[list[tuple[Sink, StreamItem]]], None]


class EngineLifecycle(abc.ABC):
    """`async with engine:` starts it, and stops it however the block ends."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()


class AsyncEngine(EngineLifecycle):
    def __init__(
        self,
        loaded: LoadedModel,
        config: ServerConfig,
        collectors: dict[str, MetricWrapperBase] | None = None,
        deliver: Deliver | None = None,
    ) -> None:
        """`deliver` takes each step's (sink, item) pairs; by default they go to the RequestStreams
        `generate` returned, on the event loop that started the engine."""
        self.loaded = loaded
        self._deliver = deliver
        self.config = config
        self._telemetry = EngineTelemetry(collectors, loaded.device, loaded.name)
        self._core: EngineCore | None = None
        self._lock = threading.Lock()
        # Held by the loop around each forward pass: the model's layers change only outside one.
        self._model_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._stopping = False
        self._mean_latency_seconds = 1.0
        self._preemptions_reported = 0

    async def start(self) -> None:
        """Build the KV cache and run the warm-up pass (off the event loop), then start the loop."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._core = await asyncio.to_thread(EngineCore, self.loaded, self.config)
        await asyncio.to_thread(self._core.warm_up)
        self._telemetry.model_loaded(self.loaded.name, self.loaded.dtype, self.loaded.quantization)
        workers = self.loaded.workers
        self._telemetry.ranks_up(lambda: 1 if workers is None else workers.ranks_up)
        if workers is not None:
            self._telemetry.worker_memory(workers.worker_memory)
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the loop after its current step; requests still in flight end with EngineNotReadyError."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            # With a rank gone, a step may wait on it inside a collective until the step timeout.
            grace = None if self.ranks_alive else _DEAD_RANK_JOIN_SECONDS
            await asyncio.to_thread(self._thread.join, grace)
        self.fail_all(EngineNotReadyError("the engine stopped before the request finished"))

    @property
    def ready(self) -> bool:
        return self.alive and not self._draining and not self._stopping

    @property
    def alive(self) -> bool:
        """The loop runs (draining or not): it has started and neither it nor a rank has died."""
        running = self._thread is not None and self._thread.is_alive()
        return self._core is not None and running and self.ranks_alive

    @property
    def ranks_alive(self) -> bool:
        """Every process holding a part of the model is up (always, without tensor parallelism)."""
        return self.loaded.workers is None or self.loaded.workers.alive

    def begin_drain(self) -> None:
        """Refuse new requests; those already submitted run to the end."""
        self._draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is running or waiting; False if `timeout` seconds pass first."""
        return await wait_until(lambda: (stats := self.stats()).running + stats.waiting == 0, timeout)

    def stats(self) -> EngineStats:
        if self._core is None:
            return EngineStats(running=0, waiting=0, kv_cache_usage=0.0, preemptions=0)
        with self._lock:
            return self._core.stats()

    def generate(self, request: GenerationRequest) -> RequestStream:
        """Submit `request`; raises EngineNotReadyError, QueueFullError, PromptTooLongError or
        InvalidRequestError here, before any token, when it cannot be admitted."""
        stream = RequestStream(request.request_id, on_abandon=self.abort)
        self.submit(request, stream)
        return stream

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        """Admit `request`, its items to go to `sink`, or raise as `generate` does."""
        core = self._core
        if core is None or not self.ready:
            raise EngineNotReadyError("the engine is not accepting requests (starting, draining or stopped)")
        seq = Sequence.from_request(request, time.monotonic(), core.grammars)
        with self._lock:
            core.validate(request)
            # Requests that get a running slot at the next step are not queued behind anyone.
            free_slots = max(0, self.config.max_num_seqs - core.num_running)
            if core.num_waiting >= self.config.max_queue_len + free_slots:
                self._telemetry.rejected(metrics.RejectionReason.QUEUE_FULL)
                raise QueueFullError(self._retry_after_seconds(core.num_waiting))
            seq.sink = sink
            core.add(seq)
        self._wakeup.set()

    @property
    def vocab_size(self) -> int:
        return self.loaded.vocab_size

    async def metric_families(self) -> list[Metric]:
        """Metrics kept outside the server's registry: none, the engine writes into the server's."""
        return []

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for on its own (part of a character, for some)."""
        if self._core is None:
            raise EngineNotReadyError("the engine is not accepting requests (starting)")
        return self._core.token_bytes(token_id)

    def compile_grammar(self, spec: GrammarSpec) -> CompiledGrammar:
        """Compile (or find in the cache) a request's grammar; blocking, so call it off the event loop.
        Raises InvalidGrammarError, or EngineNotReadyError before the engine has started."""
        if self._core is None:
            raise EngineNotReadyError("the engine is not accepting requests (starting)")
        return self._core.compile_grammar(spec)

    def abort(self, request_id: str, reason: Literal["cancelled", "stop"] = "cancelled") -> None:
        """End a request and free its KV blocks. `cancelled`: the client went away (counted as a
        cancellation); `stop`: the API layer matched a stop string, a normal finish."""
        if self._core is None:
            return
        with self._lock:
            seq = self._core.abort(request_id, "abort" if reason == "cancelled" else "stop")
        if seq is not None:
            self._end_aborted([seq], cancelled=reason == "cancelled")

    def _end_aborted(self, seqs: list[Sequence], cancelled: bool) -> None:
        now = time.monotonic()
        for seq in seqs:
            if cancelled:
                self._telemetry.cancelled()
            self._telemetry.finished(seq, now)
        self._send([(seq.sink, None) for seq in seqs])
        self._wakeup.set()

    async def load_lora_adapter(self, name: str, path: Path) -> None:
        """Read an adapter (off the event loop) and serve it under `name` from the next step on.

        Raises LoraLoadError when it cannot be read, does not fit the model or the limits."""
        from inference.lora.adapter import read_lora_adapter  # peft: imported only when needed

        loaded = self.loaded
        try:
            adapter = await asyncio.to_thread(read_lora_adapter, name, path, loaded.device, loaded.dtype)
            await asyncio.to_thread(self._add_adapter, adapter)
        except LoraAdapterError as error:
            raise LoraLoadError(str(error)) from error

    def _add_adapter(self, adapter: LoraAdapter) -> None:
        with self._model_lock, self._lock:
            self.loaded.adapters.add(adapter)

    async def unload_lora_adapter(self, name: str) -> None:
        """Stop serving the adapter; its requests still in flight end as aborted. UnknownModelError if
        no adapter of that name is loaded."""
        await asyncio.to_thread(self._remove_adapter, name)

    def _remove_adapter(self, name: str) -> None:
        with self._model_lock, self._lock:
            if name not in self.loaded.adapters:
                raise UnknownModelError(f"no LoRA adapter named {name!r} is loaded")
            self.loaded.adapters.remove(name)
            aborted = [] if self._core is None else self._core.abort_adapter(name)
        self._end_aborted(aborted, cancelled=True)

    def _retry_after_seconds(self, waiting: int) -> int:
        estimate = self._mean_latency_seconds * (waiting + 1) / self.config.max_num_seqs
        return max(1, min(_MAX_RETRY_AFTER_SECONDS, math.ceil(estimate)))

    def _run(self) -> None:
        core = self._core
        assert core is not None
        try:
            while not self._stopping:
                self._wakeup.clear()
                with self._lock:
                    chunks = core.schedule()
                    stats = core.stats()
                self._telemetry.preempted(stats.preemptions - self._preemptions_reported)
                self._preemptions_reported = stats.preemptions
                self._telemetry.load(stats.running, stats.waiting, stats.kv_cache_usage)
                if not chunks:
                    self._wakeup.wait(_IDLE_POLL_SECONDS)
                    continue
                with self._model_lock:
                    executed = core.execute_isolated(chunks)
                if executed.failures and self._rank_lost():
                    raise RuntimeError("a tensor-parallel rank is gone: no request can run")
                with self._lock:
                    outputs, failures = core.commit(executed.chunks, executed.sampled)
                self._publish(outputs)
                self._fail_requests([*executed.failures, *failures])
        except Exception:
            logger.exception("the engine loop failed; failing every request in flight")
            self.fail_all(EngineNotReadyError("the engine failed while running the request"))

    def _rank_lost(self) -> bool:
        """After a failed step: whether a tensor-parallel rank died, which no request survives. The
        monitor may learn of the death a moment after the step saw the rank's sockets close."""
        if self.loaded.workers is None:
            return False
        deadline = time.monotonic() + _RANK_DEATH_NOTICE_SECONDS
        while self.ranks_alive:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_IDLE_CHECK_SECONDS)
        return True

    def _publish(self, outputs: list[StepOutput]) -> None:
        now = time.monotonic()
        deliveries: list[tuple[Sink, StreamItem]] = []
        self._telemetry.tokens([output.seq for output in outputs], now)
        for output in outputs:
            if output.event.finish_reason is not None:
                self._telemetry.finished(output.seq, now)
                latency = now - output.seq.arrival_time
                self._mean_latency_seconds += _LATENCY_SMOOTHING * (latency - self._mean_latency_seconds)
            deliveries.append((output.seq.sink, output.event))
        self._send(deliveries)

    def _fail_requests(self, failures: list[RequestFailure]) -> None:
        if not failures or self._core is None:
            return
        now = time.monotonic()
        deliveries: list[tuple[Sink, StreamItem]] = []
        for failure in failures:
            logger.error(
                "a request failed in the engine step; it alone ends",
                extra={"engine_request_id": failure.seq.request_id},
                exc_info=failure.error,
            )
            with self._lock:
                seq = self._core.abort(failure.seq.request_id)
            if seq is not None:
                self._telemetry.finished(seq, now)
                deliveries.append((seq.sink, RequestFailedError("generation failed for this request")))
        self._send(deliveries)

    def fail_all(self, error: EngineError) -> None:
        """End every request in flight, running or waiting, with `error` (drain grace over, stop)."""
        if self._core is None:
            return
        with self._lock:
            aborted = [self._core.abort(request_id) for request_id in list(self._core.sequences)]
        self._send([(seq.sink, error) for seq in aborted if seq is not None])

    def _send(self, deliveries: list[tuple[Sink, StreamItem]]) -> None:
        if not deliveries:
            return
        if self._deliver is not None:
            self._deliver(deliveries)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_push_to_streams, deliveries)


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition` holds within `timeout` seconds, polling."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_IDLE_CHECK_SECONDS)
    return True


def _push_to_streams(deliveries: list[tuple[Sink, StreamItem]]) -> None:
    for stream, item in deliveries:
        stream.push(item)  # type: ignore[union-attr]  # without `deliver`, every sink is a stream
