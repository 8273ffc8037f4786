"""Server life cycle: not ready before the engine runs, a failed load exits, SIGTERM drains then exits 0.

The SIGTERM scenario runs `python -m inference serve` as a real subprocess with the default (tiny demo)
model, once per module; each test below checks one thing it observed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from inference.api.app import create_app
from inference.config import ServerConfig

from .conftest import (
    eventually,
    free_port,
    metric_value,
    sse_payloads,
    uvicorn_on_thread,
    wait_for_status,
)

pytestmark = pytest.mark.slow

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
LONG_STREAM = {
    "prompt": "drain me",
    "max_tokens": 480,
    "ignore_eos": True,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def start_server(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # A private cache: the demo model is made fresh for this server, never taken from the user's.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "serve", "--port", str(port), *flags],
        cwd=REPOSITORY_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    return process, f"http://127.0.0.1:{port}"


@dataclass
class DrainObservation:
    ready_during_drain: int
    new_request_during_drain: int
    in_flight_payloads: list[dict | str]
    exit_status: int
    log: list[dict]


def log_records(path: Path) -> list[dict]:
    """The JSON records of a server's log (other lines, such as a library's warnings, skipped)."""
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def drain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrainObservation]:
    tmp_path = tmp_path_factory.mktemp("drain")
    process, base_url = start_server(tmp_path, "--drain-timeout-seconds", "60")
    try:
        wait_for_status(f"{base_url}/health/ready", 200)
        late_request = {"prompt": "late", "max_tokens": 2}
        with (
            httpx.Client(base_url=base_url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=LONG_STREAM) as in_flight,
        ):
            lines = in_flight.iter_lines()
            first = next(lines)
            process.send_signal(signal.SIGTERM)
            wait_for_status(f"{base_url}/health/ready", 503, timeout=10)
            ready_status = http.get("/health/ready").status_code
            new_status = http.post("/v1/completions", json=late_request).status_code
            payloads = sse_payloads([first, *lines])
        exit_status = process.wait(timeout=60)
        yield DrainObservation(
            ready_status, new_status, payloads, exit_status, log_records(tmp_path / "server.log")
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_turns_readiness_503(drain: DrainObservation) -> None:
    assert drain.ready_during_drain == 503


def test_sigterm_refuses_new_requests_with_503(drain: DrainObservation) -> None:
    assert drain.new_request_during_drain == 503


def test_sigterm_lets_the_in_flight_request_finish(drain: DrainObservation) -> None:
    usage = drain.in_flight_payloads[-2]["usage"]
    assert (usage["completion_tokens"], drain.in_flight_payloads[-1]) == (LONG_STREAM["max_tokens"], "[DONE]")


def test_sigterm_exits_0_after_the_drain(drain: DrainObservation) -> None:
    assert drain.exit_status == 0


def test_both_processes_freeze_their_startup_heaps_before_serving(drain: DrainObservation) -> None:
    frozen = {record["logger"]: record for record in drain.log if record["message"] == "startup heap frozen"}
    # The server's process and the engine's, each with what start-up left alive (torch, transformers),
    # which a full collection then no longer walks.
    assert set(frozen) == {"inference.server", "inference.engine.process"}
    for record in frozen.values():
        assert record["objects"] > 10_000, record
        assert record["full_collection_ms_after"] < record["full_collection_ms_before"], record


@dataclass
class CutShortObservation:
    stream_payloads: list[dict | str]
    queued_status: int
    queued_body: dict
    exit_status: int


@pytest.fixture(scope="module")
def drain_cut_short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CutShortObservation]:
    """SIGTERM with no grace while one stream runs and one request waits behind it."""
    tmp_path = tmp_path_factory.mktemp("drain-cut-short")
    flags = ("--drain-timeout-seconds", "0", "--max-num-seqs", "1")
    process, base_url = start_server(tmp_path, *flags)
    try:
        wait_for_status(f"{base_url}/health/ready", 200)
        with (
            httpx.Client(base_url=base_url, timeout=60) as http,
            ThreadPoolExecutor(max_workers=1) as pool,
            http.stream("POST", "/v1/completions", json=LONG_STREAM) as running,
        ):
            lines = running.iter_lines()
            first = next(lines)
            queued = pool.submit(http.post, "/v1/completions", json={"prompt": "queued", "max_tokens": 2})
            assert eventually(lambda: metric_value(base_url, "llm_requests_waiting") == 1)
            process.send_signal(signal.SIGTERM)
            payloads = sse_payloads([first, *lines])
            queued_response = queued.result(timeout=60)
        yield CutShortObservation(
            payloads, queued_response.status_code, queued_response.json(), process.wait(timeout=60)
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_stream_cut_by_the_drain_ends_with_an_error_event_then_done(
    drain_cut_short: CutShortObservation,
) -> None:
    *_, last_event, done = drain_cut_short.stream_payloads
    assert done == "[DONE]"
    assert last_event["error"]["code"] == "not_ready"


def test_a_request_still_queued_when_the_drain_ends_gets_503_in_openai_shape(
    drain_cut_short: CutShortObservation,
) -> None:
    assert drain_cut_short.queued_status == 503
    assert set(drain_cut_short.queued_body["error"]) == {"message", "type", "param", "code"}


def test_a_drain_cut_short_still_exits_0(drain_cut_short: CutShortObservation) -> None:
    assert drain_cut_short.exit_status == 0


def test_failed_model_load_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "not-a-model").mkdir()
    process, _ = start_server(tmp_path, "--model-path", str(tmp_path / "not-a-model"))
    try:
        assert process.wait(timeout=120) != 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def unloaded_server() -> Iterator[str]:
    """The real app before its model is loaded: uvicorn without the lifespan that would load it."""
    port = free_port()
    app = create_app(ServerConfig(port=port))
    with uvicorn_on_thread(uvicorn.Server(uvicorn.Config(app, port=port, lifespan="off")), port) as base_url:
        yield base_url


def test_liveness_answers_before_the_model_is_loaded(unloaded_server: str) -> None:
    assert httpx.get(f"{unloaded_server}/health/live").status_code == 200


@pytest.mark.parametrize("path", ["/health/ready", "/health"])
def test_readiness_is_503_before_the_model_is_loaded(unloaded_server: str, path: str) -> None:
    response = httpx.get(f"{unloaded_server}{path}")
    assert (response.status_code, response.json()["status"]) == (503, "loading")


def test_api_is_503_before_the_model_is_loaded(unloaded_server: str) -> None:
    response = httpx.post(f"{unloaded_server}/v1/completions", json={"prompt": "early"})
    assert (response.status_code, response.json()["error"]["code"]) == (503, "not_ready")
