"""Prefix caching over HTTP: outputs equal `generate`, usage reports the cached prompt tokens
(`usage.prompt_tokens_details.cached_tokens`, as OpenAI does), /metrics counts queries and hits."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from inference.config import ServerConfig
from inference.tiny_model import byte_level_tokenizer

from .conftest import RunningServer, in_process_server, metric_value, sse_payloads

BLOCK_SIZE = 16  # the server's default
MAX_TOKENS = 10


def _tokens(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(length)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return byte_level_tokenizer()


def _expected_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[int],
    max_tokens: int = MAX_TOKENS,
) -> str:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        output = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    return tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)


def _complete(client: httpx.Client, prompt: list[int], **fields: object) -> dict:
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _cached(body: dict) -> int:
    return body["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_shared_prefixes_report_cached_tokens_and_match_generate(client, reference, tokenizer):
    shared = _tokens(1, 45)  # two full blocks and 13 tokens
    first = _complete(client, shared)
    assert _cached(first) == 0
    cases = {
        "inside a block": (shared[:20] + _tokens(2, 6), 16),
        "at a block boundary": (shared[:32] + _tokens(3, 6), 32),
        "the whole prompt again": (shared, 32),
    }
    for name, (prompt, cached) in cases.items():
        body = _complete(client, prompt)
        assert _cached(body) == cached, name
        assert body["choices"][0]["text"] == _expected_text(reference, tokenizer, prompt), name


def test_concurrent_requests_sharing_a_prefix_match_generate(client, reference, tokenizer):
    shared = _tokens(4, 70)
    prompts = [shared + _tokens(10 + index, index + 1) for index in range(6)]
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        bodies = list(pool.map(lambda prompt: _complete(client, prompt), prompts))
    for prompt, body in zip(prompts, bodies, strict=True):
        assert body["choices"][0]["text"] == _expected_text(reference, tokenizer, prompt)


def test_a_cancelled_stream_leaves_a_cache_that_serves_the_next_request_right(client, reference, tokenizer):
    prompt = _tokens(5, 50)
    body = {"prompt": prompt, "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        next(response.iter_lines())  # one chunk, then the client goes away
    again = _complete(client, prompt)
    assert _cached(again) == 48
    assert again["choices"][0]["text"] == _expected_text(reference, tokenizer, prompt)


def test_the_streamed_usage_chunk_reports_cached_tokens(client):
    prompt = _tokens(6, 40)
    _complete(client, prompt)
    body = {"prompt": prompt, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as response:
        usage = sse_payloads(response.iter_lines())[-2]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 32}


def test_the_next_chat_turn_reuses_the_history(client):
    messages = [{"role": "user", "content": "Tell me everything about prefix caching in two lines."}]
    first = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 20}).json()
    history = first["usage"]["prompt_tokens"]
    messages += [first["choices"][0]["message"], {"role": "user", "content": "And then?"}]
    second = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 5}).json()
    assert _cached(second) >= history // BLOCK_SIZE * BLOCK_SIZE


@pytest.fixture(scope="module")
def squeezed_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """A server of this module's own, nothing else sends it requests. Room in its KV cache for about
    one and a half requests: cached blocks get evicted, sequences preempted."""
    kv_bytes_per_token = 2 * 2 * 2 * 16 * 4  # layers x (keys, values) x KV heads x head size x float32
    config = ServerConfig(
        model_path=tiny_model_dir, max_model_len=160, max_num_batched_tokens=32,
        kv_cache_memory_bytes=kv_bytes_per_token * 240,
    )  # fmt: skip
    with in_process_server(config) as running:
        yield running


def test_eviction_and_preemption_under_a_squeezed_cache_match_generate(squeezed_server, reference, tokenizer):
    prefixes = [_tokens(20 + index, 60) for index in range(3)]
    prompts = [prefixes[index % 3] + _tokens(30 + index, 5) for index in range(9)]
    with squeezed_server.client(api_key=None) as client, ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        bodies = list(pool.map(lambda prompt: _complete(client, prompt, max_tokens=40), prompts))
    base_url = squeezed_server.base_url
    assert metric_value(base_url, "llm_preemptions_total") > 0
    assert metric_value(base_url, "llm_prefix_cache_hits_total") > 0
    for prompt, body in zip(prompts, bodies, strict=True):
        assert body["choices"][0]["text"] == _expected_text(reference, tokenizer, prompt, max_tokens=40)


def test_metrics_count_prefix_cache_queries_and_hits_in_tokens(squeezed_server: RunningServer):
    def counters() -> tuple[float, float]:
        return tuple(
            metric_value(squeezed_server.base_url, name)
            for name in ("llm_prefix_cache_queries_total", "llm_prefix_cache_hits_total")
        )

    prompt = _tokens(7, 36)
    before = counters()
    with squeezed_server.client(api_key=None) as client:
        _complete(client, prompt)
        _complete(client, prompt)
    after = counters()
    assert (after[0] - before[0], after[1] - before[1]) == (2 * len(prompt), 32)


def test_with_prefix_caching_off_nothing_is_reported_cached(tiny_model_dir: Path):
    config = ServerConfig(model_path=tiny_model_dir, enable_prefix_caching=False)
    prompt = _tokens(8, 40)
    with in_process_server(config) as running, running.client(api_key=None) as client:
        _complete(client, prompt)
        assert _cached(_complete(client, prompt)) == 0
        assert metric_value(running.base_url, "llm_prefix_cache_hits_total") == 0


def test_the_openai_client_reads_the_cached_tokens(api_server: RunningServer):
    client = api_server.openai()
    model = api_server.state.model.name
    messages = [{"role": "system", "content": "You answer questions about the service, briefly. " * 2},
                {"role": "user", "content": "Where is my order?"}]  # fmt: skip
    client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    again = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    cached = (again.usage.prompt_tokens - 1) // BLOCK_SIZE * BLOCK_SIZE  # all but the last token, in blocks
    assert again.usage.prompt_tokens_details.cached_tokens == cached
