"""Greedy decoding through the engine equals `transformers` `generate` on each request alone.

Sixteen-plus requests of mixed prompt and output lengths run concurrently through the engine,
for several architectures; each must give, token for token, what `model.generate` gives for that
request by itself. A second run squeezes the KV cache and the token budget so that prompts are
prefilled in chunks and sequences are preempted and recomputed, and must still match.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from transformers import (
    AutoConfig,
    GPTNeoXConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
)

from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.request import GenerationRequest
from inference.model_loading import load_model
from inference.tiny_model import byte_level_token_ids, make_tiny_model, save_random_model

from .conftest import run_with_engine
from .greedy_reference import generate_each, load_reference, random_greedy_requests

NUM_REQUESTS = 20
MAX_PROMPT_TOKENS = 90
MAX_NEW_TOKENS = 40


def _small_config(config_class: type[PretrainedConfig], **specific: object) -> PretrainedConfig:
    """A two-layer random model of `config_class` that matches the byte-level tokenizer; the wide
    init keeps greedy decoding clear of near-ties, as in the demo model."""
    return config_class(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, initializer_range=0.3, tie_word_embeddings=False,
        **byte_level_token_ids(), **specific,
    )  # fmt: skip


def _qwen2_config() -> PretrainedConfig:
    return _small_config(Qwen2Config, num_key_value_heads=2)


def _gpt_neox_config() -> PretrainedConfig:
    # Partial rotary embeddings and a parallel residual: a different attention module from Llama's.
    return _small_config(GPTNeoXConfig)


def _mistral_sliding_window_config() -> PretrainedConfig:
    # A window much shorter than the requests, so every attention path has to apply it.
    return _small_config(MistralConfig, num_key_value_heads=2, sliding_window=24)


RANDOM_ARCHITECTURES = {
    "qwen2": _qwen2_config,
    "gpt_neox": _gpt_neox_config,
    "mistral_sliding_window": _mistral_sliding_window_config,
}


@pytest.fixture(scope="module", params=["llama", *RANDOM_ARCHITECTURES])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp(request.param)
    if request.param == "llama":
        return make_tiny_model(out_dir)
    return save_random_model(RANDOM_ARCHITECTURES[request.param](), out_dir)


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    return random_greedy_requests(7, NUM_REQUESTS, MAX_PROMPT_TOKENS, MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def expected(model_dir: Path, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    """What `generate` gives for each request alone (the model's default attention, its own cache)."""
    return generate_each(load_reference(model_dir), requests)


async def _generate_concurrently(
    engine: AsyncEngine, requests: list[GenerationRequest]
) -> dict[str, list[int]]:
    async def one(request: GenerationRequest) -> list[int]:
        return [event.token_id async for event in engine.generate(request)]

    results = await asyncio.gather(*(one(request) for request in requests))
    return {request.request_id: tokens for request, tokens in zip(requests, results, strict=True)}


def _run_engine(
    model_dir: Path, requests: list[GenerationRequest], **settings: object
) -> tuple[dict[str, list[int]], float]:
    """Each request's tokens through a fresh engine, and how many preemptions the engine reported."""
    loaded = load_model(ServerConfig(model_path=model_dir, **settings))

    async def body(engine: AsyncEngine, registry: CollectorRegistry) -> tuple[dict[str, list[int]], float]:
        outputs = await _generate_concurrently(engine, requests)
        return outputs, registry.get_sample_value("llm_preemptions_total") or 0.0

    return run_with_engine(loaded, body, **settings)


def test_concurrent_greedy_batch_matches_generate_alone(model_dir, requests, expected):
    outputs, _ = _run_engine(model_dir, requests)
    assert outputs == expected


def _kv_bytes_per_token(model_dir: Path) -> int:
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * kv_heads * head_dim * torch.float32.itemsize


def test_greedy_matches_with_chunked_prefill_and_preemption(model_dir, requests, expected):
    # KV room for about 1.5 of the longest requests, and a token budget below most prompts.
    max_model_len = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS
    outputs, preemptions = _run_engine(
        model_dir,
        requests,
        max_model_len=max_model_len,
        max_num_batched_tokens=32,
        kv_cache_block_size=8,
        kv_cache_memory_bytes=_kv_bytes_per_token(model_dir) * max_model_len * 3 // 2,
    )
    assert preemptions > 0
    assert outputs == expected
