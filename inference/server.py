"""Run the app under uvicorn with a Kubernetes-friendly shutdown.

On SIGTERM (or SIGINT) uvicorn would close the listening socket at once. Here the server keeps
answering instead: readiness turns 503 so the Service stops routing to the pod, new generation
requests get 503, in-flight ones run to completion (up to `drain_timeout_seconds`), and only then
does uvicorn shut down, so the process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import torch
import uvicorn
from transformers.utils import logging as hf_logging

from inference.api.app import create_app
from inference.api.connections import bounded_protocol
from inference.api.state import ServingState, serving_state_of
from inference.config import ServerConfig, default_torch_threads
from inference.logging import configure_logging

logger = logging.getLogger(__name__)

_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the engine is idle, the last bytes of finished responses still need to reach their clients.
_RESPONSE_FLUSH_SECONDS = 5.0
_GIL_SWITCH_INTERVAL_SECONDS = 0.0005


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self.serving = state
        self._drain_task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Unlike uvicorn's own handler, this one does not re-raise the signal after shutdown, which
        # would turn a clean drain into death by SIGTERM (exit status 143).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in _SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, self.request_shutdown, sig)
        try:
            yield
        finally:
            for sig in _SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)

    def request_shutdown(self, sig: int = signal.SIGTERM) -> None:
        if self._drain_task is None:
            logger.info("draining", extra={"signal": signal.Signals(sig).name})
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())
        else:
            logger.warning("second shutdown signal: exiting without waiting")
            self.should_exit = True
            self.force_exit = True

    async def _drain_then_exit(self) -> None:
        try:
            await self.serving.drain()
        finally:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        # Exiting non-zero lets the orchestrator restart the container; readiness alone would not.
        if self.serving.failed:
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(config: ServerConfig, before_ready: Callable[[], None] | None = None) -> DrainingServer:
    app = create_app(config, before_ready)
    uvicorn_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,  # logging.configure_logging owns the format
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=_RESPONSE_FLUSH_SECONDS,
        http=bounded_protocol(config),
        timeout_keep_alive=config.timeout_keep_alive,  # type: ignore[arg-type]  # a float works too
    )
    return DrainingServer(uvicorn_config, serving_state_of(app))


def configure_process(config: ServerConfig) -> None:
    """Logging, threads and the GIL's switch interval, for the server's process and the engine's."""
    configure_logging(config.log_level)
    torch.set_num_threads(config.torch_threads or default_torch_threads())
    # A thread that wants the GIL while another runs Python waits up to the switch interval: at
    # Python's 5 ms, the engine thread stalls behind the event loop's SSE work when they share a
    # process (`--no-engine-process`), and token messages wait behind it when they do not.
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_SECONDS)
    # Progress bars are not log lines; on a JSON log stream they are noise a parser must skip.
    hf_logging.disable_progress_bar()


def freeze_startup_heap(log: logging.Logger) -> None:
    """Leave what start-up made alive (torch's, transformers' and the server's own objects, hundreds of
    thousands) out of every later garbage collection, as vLLM does. A full collection walks them all,
    which holds the process, and every stream or the engine loop in it, for tens of milliseconds.
    Collected first, so no garbage is kept. For a server's own process only: a process that starts
    and stops many servers (the tests) would keep their cycles for good. Logs what a full collection
    took before and takes after, with nothing but live objects to walk both times."""
    gc.collect()
    before = _full_collection_seconds()
    gc.freeze()
    after = _full_collection_seconds()
    log.info(
        "startup heap frozen",
        extra={
            "objects": gc.get_freeze_count(),
            "full_collection_ms_before": round(before * 1000, 3),
            "full_collection_ms_after": round(after * 1000, 3),
        },
    )


def _full_collection_seconds() -> float:
    start = time.perf_counter()
    gc.collect()
    return time.perf_counter() - start


def serve(config: ServerConfig) -> int:
    """Serve until drained or failed; the process exit status."""
    configure_process(config)
    # Frozen once the engine (or, with an engine process, its client and the tokenizer) is up.
    server = build_server(config, before_ready=functools.partial(freeze_startup_heap, logger))
    server.run()
    return 1 if server.serving.failed else 0
