"""A bounded load test on loopback: many streaming clients against a small batch and queue.

Every request must end as a completed stream or a 429 with Retry-After: no 5xx, nothing hung, and the
KV cache empty again afterwards. Clients start no new request after `DURATION_SECONDS`, and each
request has a timeout, so the test stops by itself.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import httpx
import pytest

from inference.config import ServerConfig

from .conftest import API_KEY, RunningServer, engine_idle, eventually, in_process_server, sse_payloads

pytestmark = pytest.mark.slow

CLIENTS = 50
DURATION_SECONDS = 15.0
# A request still open after this long is counted as hung.
REQUEST_TIMEOUT_SECONDS = 60.0
BODY = {"prompt": "load", "max_tokens": 16, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def server(tiny_model_dir) -> Iterator[RunningServer]:
    config = ServerConfig(model_path=tiny_model_dir, api_key=API_KEY, max_num_seqs=4, max_queue_len=8)
    with in_process_server(config) as running:
        yield running


def stream_outcome(status: int, payloads: list) -> str:
    if status != 200:
        return f"status {status}"
    chunks = [payload for payload in payloads if isinstance(payload, dict)]
    finished = any(choice.get("finish_reason") for chunk in chunks for choice in chunk.get("choices", []))
    return "completed" if payloads and payloads[-1] == "[DONE]" and finished else "cut short"


async def one_client(client: httpx.AsyncClient, deadline: float) -> list[str]:
    loop = asyncio.get_running_loop()
    outcomes = []
    while loop.time() < deadline:
        try:
            async with client.stream("POST", "/v1/completions", json=BODY) as response:
                if response.status_code == 429:
                    await response.aread()
                    has_retry_after = int(response.headers.get("retry-after", "0")) >= 1
                    outcomes.append("429" if has_retry_after else "429 without Retry-After")
                    await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
                    continue
                lines = [line async for line in response.aiter_lines()]
                outcomes.append(stream_outcome(response.status_code, sse_payloads(lines)))
        except httpx.TimeoutException:
            outcomes.append("hung")
        except httpx.TransportError as error:
            outcomes.append(f"transport error {type(error).__name__}")
    return outcomes


async def load(server: RunningServer) -> collections.Counter[str]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as client:
        deadline = asyncio.get_running_loop().time() + DURATION_SECONDS
        results = await asyncio.gather(*(one_client(client, deadline) for _ in range(CLIENTS)))
    return collections.Counter(outcome for outcomes in results for outcome in outcomes)


@pytest.fixture(scope="module")
def outcomes(server: RunningServer) -> collections.Counter[str]:
    return asyncio.run(load(server))


def test_every_request_completes_or_gets_429(outcomes: collections.Counter[str]) -> None:
    assert set(outcomes) <= {"completed", "429"}, outcomes


def test_the_load_reached_both_outcomes(outcomes: collections.Counter[str]) -> None:
    assert outcomes["completed"] > 0 and outcomes["429"] > 0, outcomes


def test_the_kv_cache_is_empty_after_the_load(
    outcomes: collections.Counter[str], server: RunningServer
) -> None:
    assert eventually(lambda: engine_idle(server))
