"""`python -m inference serve --tensor-parallel-size 2` as a real process: the `openai` client gets the
single-process server's answers, and a worker killed while the server idles makes it exit non-zero."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import psutil
import pytest

from .conftest import API_KEY, RunningServer, metric_value, wait_for_status
from .test_server_lifecycle import start_server

pytestmark = pytest.mark.slow

RANKS = 2


@dataclass
class SplitServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60.0)


@pytest.fixture(scope="module")
def split_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitServer]:
    tmp_path = tmp_path_factory.mktemp("tensor-parallel-server")
    process, base_url = start_server(
        tmp_path, "--model-path", str(tiny_model_dir), "--tensor-parallel-size", str(RANKS),
        "--api-key", API_KEY,
    )  # fmt: skip
    try:
        wait_for_status(f"{base_url}/health/ready", 200, timeout=180)
        yield SplitServer(process, base_url, tmp_path / "server.log")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(client: openai.OpenAI) -> list[object]:
    chat = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Split me over two ranks"}],
        max_tokens=12,
        temperature=0,
    )
    completion = client.completions.create(
        model=chat.model, prompt="The quick brown fox", max_tokens=12, temperature=0, logprobs=1
    )
    streamed = client.chat.completions.create(
        model=chat.model,
        messages=[{"role": "user", "content": "stream it"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    return [
        chat.choices[0].message.content, chat.choices[0].finish_reason, chat.usage.completion_tokens,
        completion.choices[0].text, completion.choices[0].logprobs.tokens,
        "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices),
    ]  # fmt: skip


def test_openai_client_gets_the_single_process_answers(split_server: SplitServer, api_server: RunningServer):
    assert _answers(split_server.openai()) == _answers(api_server.openai())


def test_metrics_cover_every_rank(split_server: SplitServer):
    assert metric_value(split_server.base_url, "llm_tensor_parallel_ranks_up") == RANKS
    for rank in range(RANKS):
        device = {"device": f"cpu:{rank}"}
        used = metric_value(split_server.base_url, "llm_device_memory_used_bytes", device)
        assert 0 < used < metric_value(split_server.base_url, "llm_device_memory_total_bytes", device)


def _spawned_children(pid: int) -> list[int]:
    """The processes `pid` spawned with multiprocessing, but for its resource tracker."""
    commands = {child.pid: " ".join(child.cmdline()) for child in psutil.Process(pid).children()}
    return [
        child for child, command in commands.items()
        if "spawn_main" in command and "resource_tracker" not in command
    ]  # fmt: skip


def _worker_pids(server_pid: int) -> list[int]:
    # The server's one spawned child is its engine process, rank 0; the other ranks are that one's.
    (engine,) = _spawned_children(server_pid)
    return _spawned_children(engine)


def test_a_worker_killed_while_idle_makes_the_server_exit_non_zero(split_server: SplitServer):
    (worker,) = _worker_pids(split_server.process.pid)
    os.kill(worker, signal.SIGKILL)
    assert split_server.process.wait(timeout=60) != 0
    assert "tensor-parallel rank died" in split_server.log.read_text()
