"""The engine measured over HTTP: the same workload sent by concurrent streaming clients to a real
`serve` process on loopback, to set beside the in-process run and see what the HTTP layer costs
(SSE framing, detokenization, the event loop sharing a process with the engine loop).

Each request is a `/v1/completions` call with the workload's prompt token ids, greedy,
`ignore_eos` and `max_tokens` as in-process, streamed; a token's time is when its chunk arrives.
The clients share the machine's cores with the server, so they are aiohttp's, whose HTTP parser is
compiled (vLLM's serving benchmark uses it too): httpx's clients took well over twice the CPU per
streamed chunk, time that the server then did not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import aiohttp

from inference.bench.workload import RequestTiming, WorkItem

_READY_TIMEOUT_SECONDS = 300.0
_POLL_SECONDS = 0.1
# Loopback is reached directly, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _flag(name: str, value: object) -> str:
    """`serve`'s flag for a setting: `--name=value`, or `--name` / `--no-name` for a switch."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag}={value}"


class RunningServer(NamedTuple):
    base_url: str
    pid: int


@contextlib.contextmanager
def serve_process(
    model_dir: Path, settings: dict[str, object], torch_threads: int
) -> Iterator[RunningServer]:
    """`python -m inference serve` on a free loopback port, yielded once ready."""
    port = _free_port()
    flags = [_flag(name, value) for name, value in settings.items()]
    command = [
        sys.executable, "-m", "inference", "serve", f"--model-path={model_dir}", "--host=127.0.0.1",
        f"--port={port}", f"--torch-threads={torch_threads}", "--log-level=warning", *flags,
    ]  # fmt: skip
    # The server's settings come from the flags alone, not from LLM_SERVING_* variables around the bench.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("LLM_SERVING_")}
    server = subprocess.Popen(command, env=environment)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not _ready(base_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready (exit status {server.poll()})")
            time.sleep(_POLL_SECONDS)
        yield RunningServer(base_url, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _ready(base_url: str) -> bool:
    try:
        with _DIRECT.open(f"{base_url}/health/ready", timeout=5.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # refused while starting; a 503 while loading
        return False


async def _stream_one(
    session: aiohttp.ClientSession, model: str, item: WorkItem, start: float
) -> RequestTiming:
    await asyncio.sleep(max(0.0, start + item.arrival_offset - time.monotonic()))
    arrival = time.monotonic()
    body = {
        "model": model, "prompt": item.prompt_token_ids, "max_tokens": item.max_tokens, "temperature": 0.0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    chunk_times: list[float] = []
    completion_tokens = 0
    async with session.post("/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:  # one SSE line at a time
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line.removeprefix(b"data: "))
            if chunk.get("choices"):
                chunk_times.append(time.monotonic())
            if chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
    # A chunk can carry several tokens (text held back until a character is complete): those
    # tokens arrived with it.
    token_times = chunk_times + chunk_times[-1:] * (completion_tokens - len(chunk_times))
    return RequestTiming(arrival, token_times[:completion_tokens])


def run_over_http(base_url: str, workload: list[WorkItem]) -> list[RequestTiming]:
    async def main() -> list[RequestTiming]:
        connections = aiohttp.TCPConnector(limit=len(workload))
        no_timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(base_url, connector=connections, timeout=no_timeout) as session:
            async with session.get("/v1/models") as models:
                model = (await models.json())["data"][0]["id"]
            start = time.monotonic()
            streams = (_stream_one(session, model, item, start) for item in workload)
            return list(await asyncio.gather(*streams))

    return asyncio.run(main())
