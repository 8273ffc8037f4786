"""The engine in a process of its own (the server's default).

The server's process keeps the tokenizer and no weights; requests and their tokens cross a pipe. Every
server test on the shared `api_server` runs through this path (exactness, the API surface, LoRA,
metrics); the tests here are about the process itself: that it is one, that its output is the model's,
and that what can go wrong between the two processes ends requests cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from inference.config import ServerConfig
from inference.engine.process import EngineProcess, from_wire, to_wire
from inference.engine.request import EngineNotReadyError, QueueFullError, TokenEvent, TokenLogprobs
from inference.model_loading import ModelLoadError, ServedModel
from inference.server import build_server

from .conftest import (
    API_KEY,
    RunningServer,
    eventually,
    free_port,
    in_process_server,
    sse_payloads,
    uvicorn_on_thread,
    wait_for_status,
)
from .greedy_reference import generate_each, load_reference, random_greedy_requests

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
LONG_STREAM = {"prompt": "keep going", "max_tokens": 400, "ignore_eos": True, "stream": True}


def test_a_steps_items_cross_the_pipe_as_they_were_and_token_events_as_plain_tuples():
    deliveries = [
        ("first", TokenEvent(7)),
        ("second", TokenEvent(8, TokenLogprobs(-0.25, ((8, -0.25), (9, -1.5))), "stop", 16)),
        ("aborted", None),
        ("failed", EngineNotReadyError("the engine is stopping")),
    ]
    wire = to_wire(deliveries)
    assert [type(item) for _, item in wire[:2]] == [tuple, tuple]
    received = from_wire(pickle.loads(pickle.dumps(wire)))
    assert received[:3] == deliveries[:3]
    assert [type(item) for _, item in received] == [TokenEvent, TokenEvent, type(None), EngineNotReadyError]
    assert str(received[3][1]) == "the engine is stopping"


def test_the_engine_runs_in_a_child_process_and_the_server_holds_no_weights(
    api_server: RunningServer,
) -> None:
    engine = api_server.state.engine
    assert isinstance(engine, EngineProcess)
    assert engine.pid is not None and engine.pid != os.getpid()
    assert psutil.Process(engine.pid).ppid() == os.getpid()
    assert isinstance(api_server.state.model, ServedModel)


def test_concurrent_greedy_requests_through_the_engine_process_equal_generate(
    api_server: RunningServer, tiny_model_dir: Path
) -> None:
    requests = random_greedy_requests(seed=11, count=12, max_prompt_tokens=48, max_new_tokens=16)
    expected = generate_each(load_reference(tiny_model_dir), requests)
    tokenizer = api_server.state.model.tokenizer

    async def complete_all() -> list[str]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers, timeout=60) as client:
            responses = await asyncio.gather(*(
                client.post("/v1/completions", json={
                    "prompt": request.prompt_token_ids, "max_tokens": request.sampling.max_tokens,
                    "temperature": 0,
                })
                for request in requests
            ))  # fmt: skip
        return [response.json()["choices"][0]["text"] for response in responses]

    texts = asyncio.run(complete_all())
    decode = tokenizer.decode
    assert texts == [decode(expected[request.request_id], skip_special_tokens=True) for request in requests]


def test_a_queue_full_refusal_crosses_the_pipe_with_its_retry_time() -> None:
    refusal = pickle.loads(pickle.dumps(QueueFullError(7)))
    assert (refusal.retry_after_seconds, str(refusal)) == (7, str(QueueFullError(7)))


def test_each_metric_family_is_exported_once(api_server: RunningServer) -> None:
    with api_server.client() as client:
        client.post("/v1/completions", json={"prompt": "count me", "max_tokens": 3})
    text = httpx.get(f"{api_server.base_url}/metrics").text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families))
    # Written by the API process and by the engine process, in one exposition.
    assert {"http_requests_total", "llm_generation_tokens_total"} <= set(families)


@pytest.fixture
def doomed_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    with in_process_server(ServerConfig(model_path=tiny_model_dir, api_key=API_KEY)) as running:
        yield running


def test_when_the_engine_process_dies_streams_end_with_an_error_and_the_server_fails(
    doomed_server: RunningServer,
) -> None:
    engine = doomed_server.state.engine
    assert isinstance(engine, EngineProcess) and engine.pid is not None
    with (
        doomed_server.client() as client,
        client.stream("POST", "/v1/completions", json=LONG_STREAM) as stream,
    ):
        lines = stream.iter_lines()
        first = next(lines)
        os.kill(engine.pid, signal.SIGKILL)
        payloads = sse_payloads([first, *lines])
        *_, last_event, done = payloads
        assert (last_event["error"]["code"], done) == ("not_ready", "[DONE]")
    # Failed, the server exits (non-zero, from `serve`) for the orchestrator to restart it.
    assert eventually(lambda: doomed_server.state.failed)
    assert doomed_server.state.phase == "engine_stopped"


@pytest.fixture
def doomed_lora_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    config = ServerConfig(model_path=tiny_model_dir, api_key=API_KEY, allow_runtime_lora_updating=True)
    with in_process_server(config) as running:
        yield running


def test_a_lora_load_the_engine_process_dies_under_is_a_503_not_a_500(
    doomed_lora_server: RunningServer, tmp_path: Path
) -> None:
    """The route has passed the readiness check and waits on the engine's answer when the engine dies:
    it answers as every route does for an engine that is not serving."""
    engine = doomed_lora_server.state.engine
    assert isinstance(engine, EngineProcess) and engine.pid is not None
    os.kill(engine.pid, signal.SIGSTOP)  # the load waits for an answer that never comes
    body = {"lora_name": "late", "lora_path": str(tmp_path)}
    with doomed_lora_server.client() as client, ThreadPoolExecutor(1) as pool:
        loading = pool.submit(client.post, "/v1/load_lora_adapter", json=body)
        assert eventually(lambda: bool(engine._calls))  # the call is in the pipe
        os.kill(engine.pid, signal.SIGKILL)
        response = loading.result(timeout=60)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "not_ready"


def test_the_engine_process_ends_without_the_interpreters_teardown(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its engine has stopped and its model is closed, the engine process exits at once: tearing
    down torch's and transformers' modules and objects serves nobody, and the server's shutdown waited
    for it. An exit hook, installed in the child through `sitecustomize`, tells whether that teardown
    ran."""
    started, torn_down = tmp_path / "started", tmp_path / "torn-down"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import atexit, pathlib\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"atexit.register(pathlib.Path({str(torn_down)!r}).touch)\n"
    )
    search_path = [str(hooks), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, search_path)))

    async def start_and_stop() -> None:
        engine = EngineProcess(ServerConfig(model_path=tiny_model_dir))
        await engine.start()
        await engine.stop()

    asyncio.run(start_and_stop())
    assert started.exists()  # the hook was in the engine process
    assert not torn_down.exists()


def test_stop_does_not_take_an_engine_process_reaped_elsewhere_for_a_running_one(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`stop` used to wait on the process itself while the reader thread, seeing the pipe close, reaped
    it: whichever of the two waited second found the process gone, took it for still running, logged
    that it "did not stop in 30 s" and killed it. Here the test reaps the process before the server
    can: the process's `join`, which the reader thread reaps with, holds until the test has reaped it,
    so the order does not depend on which thread the machine runs first."""
    reaped = threading.Event()

    async def reap_then_stop() -> None:
        engine = EngineProcess(ServerConfig(model_path=tiny_model_dir))
        await engine.start()
        process = engine._process
        assert process is not None and process.pid is not None
        join = process.join

        def join_once_reaped(timeout: float | None = None) -> None:
            reaped.wait()
            join(timeout)

        process.join = join_once_reaped  # type: ignore[method-assign]
        os.kill(process.pid, signal.SIGKILL)
        os.waitpid(process.pid, 0)
        reaped.set()
        await engine.stop()

    with caplog.at_level(logging.WARNING, logger="inference.engine.process"):
        asyncio.run(reap_then_stop())
    assert "did not stop" not in caplog.text


def test_a_model_the_engine_process_cannot_load_fails_start_up_with_its_reason(tmp_path: Path) -> None:
    port = free_port()
    server = build_server(ServerConfig(model_path=tmp_path, host="127.0.0.1", port=port))
    with uvicorn_on_thread(server, port):
        assert eventually(lambda: server.serving.startup_error is not None, timeout=120)
        error = server.serving.startup_error
        assert isinstance(error, ModelLoadError) and "no config.json" in str(error)
        assert server.serving.failed


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_drains_instead_of_killing_the_engine(tmp_path: Path) -> None:
    """SIGINT reaches every process of the terminal's group: the engine process must leave the drain
    to the server, so the request in flight still finishes and the server exits 0."""
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "serve", "--port", str(port), "--drain-timeout-seconds", "60"],
        cwd=REPOSITORY_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("wb"),
        start_new_session=True,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_status(f"{base_url}/health/ready", 200)
        with (
            httpx.Client(base_url=base_url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json={**LONG_STREAM, "max_tokens": 200}) as in_flight,
        ):
            lines = in_flight.iter_lines()
            first = next(lines)
            os.killpg(process.pid, signal.SIGINT)
            payloads = sse_payloads([first, *lines])
        assert payloads[-1] == "[DONE]"
        assert all("error" not in payload for payload in payloads[:-1])
        assert payloads[-2]["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
