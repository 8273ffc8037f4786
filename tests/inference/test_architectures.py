"""Many architectures through the engine: greedy output equals `generate` alone, or a named refusal.

Each accepted architecture runs a concurrent batch with a KV cache and token budget small enough
that prompts are prefilled in chunks and sequences are preempted, and every request must match
`transformers` `generate` for that request alone, token for token. Each refused one must stop at
start-up with UnsupportedArchitectureError naming why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import transformers
from transformers import PretrainedConfig

from inference.config import ServerConfig
from inference.engine.architectures import UnsupportedArchitectureError
from inference.engine.async_engine import AsyncEngine
from inference.engine.model_runner import ModelRunner
from inference.engine.request import GenerationRequest
from inference.model_loading import load_model
from inference.tiny_model import byte_level_token_ids, save_random_model

from .conftest import run_with_engine
from .greedy_reference import generate_each, load_reference, random_greedy_requests

NUM_REQUESTS = 8
MAX_PROMPT_TOKENS = 60
MAX_NEW_TOKENS = 16
MAX_MODEL_LEN = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS


def _config(class_name: str, **specific: object) -> Callable[[], PretrainedConfig]:
    """A two-layer random model that matches the byte-level tokenizer; the wide init keeps greedy
    decoding clear of near-ties between batched and single-request kernels."""

    def make() -> PretrainedConfig:
        common = {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 512, "initializer_range": 0.3, "tie_word_embeddings": False,
        }  # fmt: skip
        return getattr(transformers, class_name)(**{**common, **byte_level_token_ids(), **specific})

    return make


_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}
EXACT = {
    "gemma": _config("GemmaConfig", num_key_value_heads=2, head_dim=16),
    # Sliding and full layers mixed, and a query scale that is not 1/sqrt(head_dim).
    "gemma3": _config("Gemma3TextConfig", num_key_value_heads=2, head_dim=16, sliding_window=24,
                      layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=8),
    "phi3": _config("Phi3Config", num_key_value_heads=2),
    # LongRoPE is exact while no position passes the original context (see the refusal below).
    "phi3_longrope_short_context": _config(
        "Phi3Config", num_key_value_heads=2, original_max_position_embeddings=MAX_MODEL_LEN,
        rope_scaling={"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}),
    "phi": _config("PhiConfig"),
    "qwen3": _config("Qwen3Config", num_key_value_heads=2, head_dim=16),
    "qwen3_moe": _config("Qwen3MoeConfig", num_key_value_heads=2, head_dim=16, num_experts=4, **_MOE),
    "mixtral": _config("MixtralConfig", num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "olmo2": _config("Olmo2Config"),
    "granite": _config("GraniteConfig", attention_multiplier=0.1, residual_multiplier=0.5,
                       embedding_multiplier=2.0, logits_scaling=2.0),
    "stablelm": _config("StableLmConfig", num_key_value_heads=2),
    "falcon": _config("FalconConfig", new_decoder_architecture=True, num_kv_heads=2),
    "starcoder2": _config("Starcoder2Config", num_key_value_heads=2, sliding_window=24),
    "cohere": _config("CohereConfig", num_key_value_heads=2),
    "gpt2": _config("GPT2Config", n_embd=64, n_layer=2, n_head=4, n_positions=512),
    # Multi-head latent attention: keys and values of different head sizes.
    "deepseek_v3": _config("DeepseekV3Config", num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32,
                           qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, n_routed_experts=4,
                           first_k_dense_replace=1, n_group=1, topk_group=1, **_MOE),
}  # fmt: skip

REFUSED = {
    "minimax_linear_attention": (
        _config("MiniMaxConfig", num_key_value_heads=2, head_dim=16), "linear_attention"
    ),
    "llama4_chunked_attention": (
        _config("Llama4TextConfig", num_key_value_heads=2, head_dim=16, attention_chunk_size=16,
                no_rope_layers=[1, 0], num_local_experts=2, intermediate_size_mlp=128),
        "chunked_attention",
    ),
    "llama4_temperature_tuning": (
        _config("Llama4TextConfig", num_key_value_heads=2, head_dim=16, no_rope_layers=[1, 0],
                layer_types=["full_attention"] * 2, num_local_experts=2, intermediate_size_mlp=128),
        "temperature tuning",
    ),
    "phi3_longrope_long_context": (
        _config("Phi3Config", num_key_value_heads=2, original_max_position_embeddings=32,
                rope_scaling={"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}),
        "longrope RoPE switches frequencies",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    return random_greedy_requests(11, NUM_REQUESTS, MAX_PROMPT_TOKENS, MAX_NEW_TOKENS)


def _generate_alone(model_dir: Path, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    return generate_each(load_reference(model_dir), requests)


def _engine_outputs(model_dir: Path, requests: list[GenerationRequest]) -> tuple[dict[str, list[int]], float]:
    # KV room for about two of the longest requests, and a token budget below most prompts.
    settings = {
        "model_path": model_dir, "max_model_len": MAX_MODEL_LEN, "max_num_batched_tokens": 24,
        "kv_cache_block_size": 8,
    }  # fmt: skip
    loaded = load_model(ServerConfig(**settings))
    kv_bytes_per_token = ModelRunner(loaded.model, loaded.device, 8).kv_bytes_per_token
    settings["kv_cache_memory_bytes"] = kv_bytes_per_token * MAX_MODEL_LEN * 2

    async def body(engine, registry):
        async def one(request: GenerationRequest) -> list[int]:
            return [event.token_id async for event in engine.generate(request)]

        results = await asyncio.gather(*(one(request) for request in requests))
        preemptions = registry.get_sample_value("llm_preemptions_total") or 0.0
        outputs = {request.request_id: tokens for request, tokens in zip(requests, results, strict=True)}
        return outputs, preemptions

    return run_with_engine(loaded, body, **settings)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(EXACT))
def test_greedy_batch_with_chunked_prefill_and_preemption_matches_generate(architecture, requests, tmp_path):
    model_dir = save_random_model(EXACT[architecture](), tmp_path / architecture)
    outputs, preemptions = _engine_outputs(model_dir, requests)
    assert preemptions > 0
    assert outputs == _generate_alone(model_dir, requests)


@pytest.mark.parametrize("architecture", sorted(REFUSED))
def test_architectures_that_would_differ_are_refused_at_start(architecture, tmp_path):
    make_config, reason = REFUSED[architecture]
    model_dir = save_random_model(make_config(), tmp_path / architecture)
    config = ServerConfig(model_path=model_dir)
    engine = AsyncEngine(load_model(config), config)
    with pytest.raises(UnsupportedArchitectureError, match=reason):
        asyncio.run(engine.start())
