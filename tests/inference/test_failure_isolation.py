"""A request whose computation raises inside the engine step fails alone, on a real server on loopback.

The failure is injected through the engine's test hook (`inference.engine.fault_injection`), which
nothing a client sends can reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from inference.config import ServerConfig
from inference.engine import fault_injection
from inference.engine.sequence import Sequence

from .conftest import API_KEY, RunningServer, engine_idle, eventually, in_process_server, sse_payloads

pytestmark = pytest.mark.slow

STREAMS = 10
BODY = {"max_tokens": 64, "temperature": 0, "ignore_eos": True}
POISON = "this prompt fails in the engine"
# The poisoned request fails after this many tokens, so its stream has started when it does.
POISON_AFTER_TOKENS = 2


@pytest.fixture(scope="module")
def server(tiny_model_dir) -> Iterator[RunningServer]:
    # The fault hook lives in this process: the engine must run here too.
    config = ServerConfig(
        model_path=tiny_model_dir, api_key=API_KEY, max_num_seqs=STREAMS + 1, engine_process=False
    )
    with in_process_server(config) as running:
        yield running


def prompt(index: int) -> str:
    return f"concurrent stream number {index}"


@pytest.fixture(scope="module")
def expected_texts(server: RunningServer) -> list[str]:
    """Each stream's greedy text, generated alone before any fault is injected."""
    with server.client() as http:
        return [
            http.post("/v1/completions", json={**BODY, "prompt": prompt(index)}).json()["choices"][0]["text"]
            for index in range(STREAMS)
        ]


async def stream_events(client: httpx.AsyncClient, body: dict, started: asyncio.Event | None = None) -> list:
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = []
        async for line in response.aiter_lines():
            lines.append(line)
            if started is not None and line.startswith("data: "):
                started.set()
        return sse_payloads(lines)


async def poisoned_run(server: RunningServer) -> tuple[list[list], list, list[str]]:
    """Ten streams, then the poisoned one while they run; the order in which they ended."""
    ended: list[str] = []

    async def tracked(name: str, body: dict, started: asyncio.Event | None = None) -> list:
        payloads = await stream_events(client, body, started)
        ended.append(name)
        return payloads

    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=120) as client:
        started = [asyncio.Event() for _ in range(STREAMS)]
        bodies = [{**BODY, "prompt": prompt(index)} for index in range(STREAMS)]
        streams = [
            asyncio.ensure_future(tracked(f"stream {index}", body, started[index]))
            for index, body in enumerate(bodies)
        ]
        await asyncio.gather(*(event.wait() for event in started))
        poisoned = await tracked("poison", {**BODY, "prompt": POISON})
        return await asyncio.gather(*streams), poisoned, ended


@pytest.fixture(scope="module")
def observed(server: RunningServer, expected_texts: list[str]) -> tuple[list[list], list, list[str]]:
    poison_ids = server.state.model.tokenizer(POISON)["input_ids"]

    def fail_the_poisoned_request(seq: Sequence) -> None:
        if seq.prompt_token_ids == poison_ids and seq.num_output_tokens >= POISON_AFTER_TOKENS:
            raise RuntimeError("injected failure")

    with fault_injection.step_fault(fail_the_poisoned_request):
        return asyncio.run(poisoned_run(server))


def streamed_text(payloads: list) -> str:
    return "".join(payload["choices"][0]["text"] for payload in payloads if isinstance(payload, dict))


def test_the_failing_stream_ends_with_an_error_event_then_done(observed) -> None:
    _, poisoned, _ = observed
    assert poisoned[-1] == "[DONE]"
    error = poisoned[-2]["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")


def test_the_failure_happened_while_the_other_streams_ran(observed) -> None:
    _, _, ended = observed
    assert ended[0] == "poison"


def test_every_other_stream_finishes_with_its_own_output(observed, expected_texts: list[str]) -> None:
    streams, _, _ = observed
    assert [streamed_text(payloads) for payloads in streams] == expected_texts
    assert all(payloads[-1] == "[DONE]" for payloads in streams)


def test_the_engine_goes_on_and_frees_the_failed_request(observed, server: RunningServer) -> None:
    assert eventually(lambda: engine_idle(server))
    with server.client() as http:
        assert http.get("/health/ready").status_code == 200
        assert http.post("/v1/completions", json={**BODY, "prompt": POISON}).status_code == 200
