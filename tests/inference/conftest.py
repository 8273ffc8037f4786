"""Shared fixtures: small Hugging Face models written once per session, nothing downloaded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from inference import metrics
from inference.api.state import ServingState
from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.model_loading import LoadedModel, load_model
from inference.server import build_server
from inference.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model (2-layer random Llama, byte-level tokenizer) in Hugging Face format."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path) -> LoadedModel:
    """The demo model loaded once; engines built on it share its weights, each with its own KV cache."""
    return load_model(ServerConfig(model_path=tiny_model_dir))


def run_with_engine(
    loaded: LoadedModel,
    body: Callable[[AsyncEngine, CollectorRegistry], Awaitable[object]],
    **settings: object,
) -> object:
    """Start an engine on `loaded` with `settings`, run `body(engine, registry)`, stop the engine."""
    registry = CollectorRegistry()

    async def main() -> object:
        collectors = metrics.build_collectors(registry)
        async with AsyncEngine(loaded, ServerConfig(**settings), collectors) as engine:
            return await body(engine, registry)

    return asyncio.run(main())


# Real servers on loopback, for the API and server tests ------------------------------------------

API_KEY = "test-api-key-0123456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_status(url: str, expected: int, timeout: float = 120.0) -> None:
    """Poll `url` until it answers `expected`; the server is loading a model meanwhile."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as poller:  # one client: each of its own costs a TLS context
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if poller.get(url).status_code == expected:
                    return
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {expected} within {timeout} s")


@dataclass
class RunningServer:
    base_url: str
    state: ServingState

    def client(self, api_key: str | None = API_KEY, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def openai(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=60.0)


@contextlib.contextmanager
def uvicorn_on_thread(server: uvicorn.Server, port: int) -> Iterator[str]:
    """Run `server` on a thread; yields its base URL once it answers, stops it afterwards."""
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_status(f"{base_url}/health/live", 200)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@contextlib.contextmanager
def in_process_server(config: ServerConfig) -> Iterator[RunningServer]:
    """`create_app` under a real uvicorn.Server on a thread, on a free loopback port, once ready."""
    config = config.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    server = build_server(config)
    with uvicorn_on_thread(server, config.port) as base_url:
        wait_for_status(f"{base_url}/health/ready", 200)
        yield RunningServer(base_url, server.serving)


@pytest.fixture(scope="session")
def api_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The shared server: the tiny model, an API key, default limits."""
    with in_process_server(ServerConfig(model_path=tiny_model_dir, api_key=API_KEY)) as running:
        yield running


@pytest.fixture
def client(api_server: RunningServer) -> Iterator[httpx.Client]:
    with api_server.client() as http:
        yield http


def sse_payloads(lines: Iterable[str]) -> list[dict | str]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final `[DONE]`."""
    payloads: list[dict | str] = []
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def stop_string_from(text: str) -> str:
    """Two characters from the middle of an output, so the cut point is known in advance."""
    for start in range(4, len(text) - 2):
        candidate = text[start : start + 2]
        if "\ufffd" not in candidate and candidate.strip():
            return candidate
    pytest.fail(f"no usable stop string in {text!r}")


def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Whether `condition` holds within `timeout` seconds, polling."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def engine_idle(server: RunningServer) -> bool:
    """Nothing running or waiting and every KV block free."""
    stats = server.state.engine.stats()
    return (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, 0.0)


def metric_value(base_url: str, series: str, labels: dict[str, str] | None = None) -> float:
    """One sample from /metrics, 0 when the series has not been written yet."""
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == series and (labels or {}).items() <= sample.labels.items():
                return sample.value
    return 0.0
