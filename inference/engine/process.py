"""The engine in a process of its own, so that HTTP work and the engine loop never wait on one GIL.

`EngineProcess` is what the API layer talks to in place of `AsyncEngine`, with the same methods. It
spawns a child that loads the model and runs an `AsyncEngine`; the two talk over one pipe.

- The API process sends `submit`, `abort`, `drain`, `fail_all`, `call` (a method whose answer it awaits:
  LoRA adapters, metrics) and `stop`.
- The engine process sends `start` with the served model's facts (or the error it failed with), then
  `items`: a step's (request id, item) pairs for every request, written by the engine thread itself
  as one message, with the engine's stats; and `reply` to each call.

A refusal (queue full, prompt too long) arrives as the request's first item, which `open_request`
awaits before anything is sent to the client. Tokenization, detokenization, grammar checks and SSE stay
in the API process; the engine process does nothing per token but pickle it. If the engine process
dies, every open request ends with EngineNotReadyError and the server turns failed (it exits, for the
orchestrator to restart it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable, Coroutine
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Metric

from inference import metrics
from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine, EngineLifecycle, Sink, wait_until
from inference.engine.core import EngineStats
from inference.engine.grammar import (
    CompiledGrammar,
    GrammarCompiler,
    GrammarSpec,
    compile_grammar,
    grammar_compiler,
    token_bytes,
)
from inference.engine.request import (
    EngineError,
    EngineNotReadyError,
    GenerationRequest,
    InvalidRequestError,
    TokenEvent,
)
from inference.engine.stream import RequestStream, StreamItem, ends_stream
from inference.model_loading import ModelLoadError, ServedModel, load_model
from inference.server import configure_process, freeze_startup_heap

logger = logging.getLogger(__name__)

_STOP_SECONDS = 30.0
_KILL_WAIT_SECONDS = 5.0
_CALL_SECONDS = 10.0
_LIFE_CHECK_SECONDS = 0.2
_NO_STATS = EngineStats(running=0, waiting=0, kv_cache_usage=0.0, preemptions=0)


class EngineProcess(EngineLifecycle):
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.model: ServedModel | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = threading.Lock()
        self._started: asyncio.Future[ServedModel] | None = None
        self._streams: dict[str, RequestStream] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._stats = _NO_STATS
        self._grammars: GrammarCompiler | None = None
        self._draining = False
        self._stopping = False

    async def start(self) -> None:
        """Spawn the engine process and wait until its engine runs; its start-up error, if it fails."""
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        # Spawned, not forked: this process has threads (uvicorn's, torch's) that a fork would not carry.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        # Not a daemon: with tensor parallelism its ranks are its own children.
        self._process = context.Process(
            target=run_engine_process, args=(self.config, theirs), name="llm-serving-engine"
        )
        await asyncio.to_thread(self._process.start)
        theirs.close()
        self._conn = ours
        self._reader = threading.Thread(target=self._read, name="engine-process-reader", daemon=True)
        self._reader.start()
        try:
            model = await self._started
            self._grammars = await asyncio.to_thread(
                grammar_compiler, model.tokenizer, model.vocab_size, model.eos_token_ids
            )
        except BaseException:
            self._process.kill()  # gone already after a failed start; cancelled (shutdown) while loading
            raise
        self.model = model

    async def stop(self) -> None:
        """Stop the engine after its current step; requests still in flight end with EngineNotReadyError."""
        self._stopping = True
        process, reader = self._process, self._reader
        if process is None or reader is None:
            return
        # The reader thread sees the pipe close when the process exits, and reaps it. It is the one
        # thread that waits on the process: of two waiting at once, the one whose wait finds the
        # process already reaped by the other takes it for still running.
        if reader.is_alive():
            with contextlib.suppress(EngineNotReadyError):
                self._send(("stop",))
            await asyncio.to_thread(reader.join, _STOP_SECONDS)
        if reader.is_alive():
            logger.warning("the engine process did not stop in %s s; killing it", _STOP_SECONDS)
            process.kill()
            await asyncio.to_thread(reader.join, _KILL_WAIT_SECONDS)
        self._end_all(EngineNotReadyError("the engine stopped before the request finished"))

    @property
    def ready(self) -> bool:
        return self.alive and not self._draining and not self._stopping

    @property
    def pid(self) -> int | None:
        """The engine process's id, once spawned."""
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        """The engine process has started its engine and has not exited (its pipe is open: the reader
        thread ends once it has closed and the process is reaped)."""
        running = self._reader is not None and self._reader.is_alive()
        return self.model is not None and running

    def begin_drain(self) -> None:
        """Refuse new requests; those already submitted run to the end."""
        self._draining = True
        self._send_if_alive(("drain",))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every request submitted from here has ended; False if `timeout` seconds pass first."""
        return await wait_until(lambda: not self._streams, timeout)

    def stats(self) -> EngineStats:
        """The engine's counts as of its latest message."""
        return self._stats

    @property
    def vocab_size(self) -> int:
        return self._served().vocab_size

    def token_bytes(self, token_id: int) -> bytes:
        return token_bytes(self._grammars, self._served().tokenizer, token_id)

    def compile_grammar(self, spec: GrammarSpec) -> CompiledGrammar:
        """Checks (and caches) the grammar here, so a bad one is a 400 at once; the engine process
        compiles its own copy from the spec."""
        self._served()
        return compile_grammar(self._grammars, spec)

    def generate(self, request: GenerationRequest) -> RequestStream:
        """Submit `request`. Refusals the engine decides (queue full, too long, unknown adapter) end the
        returned stream at its first item; EngineNotReadyError is raised here."""
        if not self.ready:
            raise EngineNotReadyError("the engine is not accepting requests (starting, draining or stopped)")
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in the engine")
        grammar = None if request.sampling.grammar is None else request.sampling.grammar.spec
        # What crosses the pipe: the grammar as its spec, the logit bias as a plain dict.
        sampling = replace(request.sampling, grammar=None, logit_bias=dict(request.sampling.logit_bias))
        stream = RequestStream(request.request_id, on_abandon=self.abort)
        self._streams[request.request_id] = stream
        try:
            self._send(("submit", replace(request, sampling=sampling), grammar))
        except EngineNotReadyError:
            del self._streams[request.request_id]
            raise
        return stream

    def abort(self, request_id: str, reason: Literal["cancelled", "stop"] = "cancelled") -> None:
        """As `AsyncEngine.abort`: the request ends here at once, and in the engine at its next message."""
        if self._streams.pop(request_id, None) is not None:
            self._send_if_alive(("abort", request_id, reason))

    def fail_all(self, error: EngineError) -> None:
        """End every request in flight with `error`."""
        self._end_all(error)
        self._send_if_alive(("fail_all", error))

    async def load_lora_adapter(self, name: str, path: Path) -> None:
        """Load an adapter in the engine process; LoraLoadError as `AsyncEngine` raises it."""
        self._served().adapter_names = await self._call("load_lora_adapter", name, path)

    async def unload_lora_adapter(self, name: str) -> None:
        self._served().adapter_names = await self._call("unload_lora_adapter", name)

    async def metric_families(self) -> list[Metric]:
        """The engine's metrics, collected in its process now; none while it is not running."""
        if not self.alive:
            return []
        try:
            return await asyncio.wait_for(self._call("metric_families"), _CALL_SECONDS)
        except (TimeoutError, EngineError):
            logger.warning("the engine process did not report its metrics")
            return []

    def _served(self) -> ServedModel:
        if self.model is None:
            raise EngineNotReadyError("the engine is not accepting requests (starting)")
        return self.model

    async def _call(self, method: str, *args: object) -> Any:
        if not self.alive:
            raise EngineNotReadyError("the engine process is not running")
        assert self._loop is not None
        call_id = next(self._call_ids)
        answer = self._calls[call_id] = self._loop.create_future()
        try:
            self._send(("call", call_id, method, args))
            return await answer
        finally:
            self._calls.pop(call_id, None)

    def _send(self, message: tuple[object, ...]) -> None:
        """EngineNotReadyError when the engine process has died (before the reader has noticed)."""
        assert self._conn is not None
        try:
            with self._send_lock:
                self._conn.send(message)
        except OSError as error:
            raise EngineNotReadyError("the engine process is gone") from error

    def _send_if_alive(self, message: tuple[object, ...]) -> None:
        if self.alive:
            with contextlib.suppress(EngineNotReadyError):  # it died meanwhile; the reader ends what was open
                self._send(message)

    def _read(self) -> None:
        """The reader thread: each message goes to the event loop as it arrives; once the pipe closes,
        it reaps the process and reports its exit."""
        assert self._conn is not None and self._loop is not None and self._process is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if not _call_soon(self._loop, self._dispatch, message):
                return
        self._process.join(_KILL_WAIT_SECONDS)
        _call_soon(self._loop, self._exited_now, self._process.exitcode)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, *body = message
        if kind == "items":
            deliveries, self._stats = body
            self._deliver(from_wire(deliveries))
        elif kind == "reply":
            call_id, error, result = body
            answer = self._calls.get(call_id)
            if answer is not None and not answer.done():
                if error is not None:
                    answer.set_exception(error)
                else:
                    answer.set_result(result)
        elif kind == "start":
            self._settle_start(body[0])

    def _settle_start(self, outcome: ServedModel | BaseException) -> None:
        if self._started is None or self._started.done():
            return
        if isinstance(outcome, BaseException):
            self._started.set_exception(outcome)
        else:
            self._started.set_result(outcome)

    def _deliver(self, deliveries: list[tuple[str, StreamItem]]) -> None:
        for request_id, item in deliveries:
            stream = self._streams.get(request_id)
            if stream is None:
                continue  # ended here already: abandoned, or failed with the others
            if ends_stream(item):
                del self._streams[request_id]
            stream.push(item)

    def _exited_now(self, exitcode: int | None) -> None:
        self._settle_start(ModelLoadError(f"the engine process exited (code {exitcode}) before it started"))
        if not self._stopping:
            logger.error("the engine process exited", extra={"exitcode": exitcode})
        gone = EngineNotReadyError("the engine process stopped before the request finished")
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(gone)
        self._end_all(gone)

    def _end_all(self, error: EngineError) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.push(error)


# A step's items as they cross the pipe: token events as plain tuples. Pickling a named tuple runs a
# Python-level reduction per instance, which made the engine process's pickling of a 64-request step
# several times slower, and its unpickling slower than rebuilding the events from plain tuples.
WireItem = tuple[Any, ...] | EngineError | None
_event_from_fields = functools.partial(tuple.__new__, TokenEvent)


def to_wire(deliveries: list[tuple[Sink, StreamItem]]) -> list[tuple[Sink, WireItem]]:
    return [(sink, tuple(item) if type(item) is TokenEvent else item) for sink, item in deliveries]


def from_wire(deliveries: list[tuple[str, WireItem]]) -> list[tuple[str, StreamItem]]:
    event = _event_from_fields
    return [(sink, event(item) if type(item) is tuple else item) for sink, item in deliveries]


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> bool:
    """Hand `callback` to `loop` from another thread; False once the loop has closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


# The engine process ---------------------------------------------------------------------------------


def run_engine_process(config: ServerConfig, conn: Connection) -> None:
    """The engine process's main: load the model, run the engine until told to stop or the pipe closes."""
    # Its life is the API process's to end, through the pipe: a Ctrl-C to the terminal's process group
    # must not kill the engine under a server that is draining.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    configure_process(config)
    status = asyncio.run(_EngineHost(config, conn).run())
    # Everything the process holds is released by now: the engine stopped, the model (and any
    # tensor-parallel ranks) closed. What the interpreter's exit would still do is tear down modules
    # and collect torch's and transformers' objects one by one, which serves nobody, yet the server's
    # shutdown would wait for it. Multiprocessing ends forked children this way too.
    logging.shutdown()
    os._exit(status)


class _EngineHost:
    """The engine process's side of the pipe."""

    def __init__(self, config: ServerConfig, conn: Connection) -> None:
        self._config = config
        self._conn = conn
        self._send_lock = threading.Lock()
        self._registry = CollectorRegistry()
        self._stop = asyncio.Event()
        self._engine: AsyncEngine | None = None

    async def run(self) -> int:
        """The exit status: 0 when stopped, 1 when the model did not load or the engine died."""
        loop = asyncio.get_running_loop()
        try:
            loaded = await asyncio.to_thread(load_model, self._config)
        except Exception as error:
            self._send(("start", _transportable(error)))
            return 1
        engine = self._engine = AsyncEngine(
            loaded, self._config, metrics.build_collectors(self._registry), self._deliver
        )
        try:
            await engine.start()
        except Exception as error:
            loaded.close()
            self._send(("start", _transportable(error)))
            return 1
        freeze_startup_heap(logger)  # the model loaded, the engine warmed up: what serving keeps
        self._send(("start", loaded.served()))
        reader = threading.Thread(target=self._read, args=(loop, engine), name="engine-commands", daemon=True)
        reader.start()
        try:
            while engine.alive and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _LIFE_CHECK_SECONDS)
            return 0 if self._stop.is_set() else 1
        finally:
            await engine.stop()
            loaded.close()

    def _send(self, message: tuple[object, ...]) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # the API process is gone; the reader stops us
            self._conn.send(message)

    def _deliver(self, deliveries: list[tuple[Sink, StreamItem]]) -> None:
        self._send(("items", to_wire(deliveries), self._stats()))

    def _stats(self) -> EngineStats:
        return self._engine.stats() if self._engine is not None else _NO_STATS

    def _read(self, loop: asyncio.AbstractEventLoop, engine: AsyncEngine) -> None:
        """The command thread: submissions and aborts go straight to the engine (it is thread-safe),
        calls to the event loop."""
        calls: dict[str, Callable[..., Coroutine[Any, Any, object]]] = {
            "load_lora_adapter": lambda *args: self._changing_adapters(engine.load_lora_adapter(*args)),
            "unload_lora_adapter": lambda *args: self._changing_adapters(engine.unload_lora_adapter(*args)),
            "metric_families": self._metric_families,
        }
        while True:
            try:
                kind, *body = self._conn.recv()
            except (EOFError, OSError):
                break
            if kind == "submit":
                self._submit(engine, *body)
            elif kind == "abort":
                engine.abort(*body)
            elif kind == "drain":
                engine.begin_drain()
            elif kind == "fail_all":
                engine.fail_all(*body)
            elif kind == "call":
                call_id, method, args = body
                asyncio.run_coroutine_threadsafe(self._answer(call_id, calls[method](*args)), loop)
            elif kind == "stop":
                break
        _call_soon(loop, self._stop.set)

    def _submit(self, engine: AsyncEngine, request: GenerationRequest, grammar: GrammarSpec | None) -> None:
        try:
            if grammar is not None:
                sampling = replace(request.sampling, grammar=engine.compile_grammar(grammar))
                request = replace(request, sampling=sampling)
            engine.submit(request, request.request_id)
        except EngineError as refusal:
            self._deliver([(request.request_id, refusal)])

    async def _answer(self, call_id: int, work: Coroutine[Any, Any, object]) -> None:
        try:
            result = await work
        except Exception as error:
            self._send(("reply", call_id, _transportable(error), None))
        else:
            self._send(("reply", call_id, None, result))

    async def _changing_adapters(self, change: Coroutine[Any, Any, None]) -> list[str]:
        """The adapters served once `change` is done, for the API process's list."""
        await change
        assert self._engine is not None
        return self._engine.loaded.adapter_names

    async def _metric_families(self) -> list[Metric]:
        return list(self._registry.collect())


def _transportable(error: Exception) -> Exception:
    """`error` as it can cross the pipe: itself when it pickles, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
