"""The paged decode kernels (Triton's, run by its interpreter on the CPU, and the one torch.compile
builds) against plain attention over each sequence's context gathered from the same block pool."""

from __future__ import annotations

import asyncio
import importlib.util
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import MistralConfig

from inference.config import ServerConfig
from inference.engine import compiled_decode
from inference.engine.request import GenerationRequest
from inference.model_loading import load_model
from inference.tiny_model import byte_level_token_ids, save_random_model

from .conftest import run_with_engine
from .greedy_reference import generate_each, load_reference, random_greedy_requests

# The package's __init__ sets TRITON_INTERPRET, where there is no GPU, before anything imports Triton.
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="the Triton kernel needs the `gpu` extra (triton)"
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "compiled"]


def _kernel(backend: str):
    if backend == "compiled":
        return compiled_decode.paged_decode_attention
    from inference.engine.paged_decode import paged_decode_attention

    return paged_decode_attention


BLOCK_SIZE = 8
NUM_BLOCKS = 40


def _reference(query, keys, values, tables, ends, scale, window):
    outputs = []
    group = query.shape[1] // keys.shape[0]
    for row, end in enumerate(ends.tolist()):
        blocks = torch.tensor(tables[row])
        slots = (blocks[:, None] * BLOCK_SIZE + torch.arange(BLOCK_SIZE)).flatten()[:end]
        first = max(0, end - window) if window else 0
        seq_keys = keys[:, slots[first:]].repeat_interleave(group, 0)
        seq_values = values[:, slots[first:]].repeat_interleave(group, 0)
        attended = F.scaled_dot_product_attention(query[row][:, None], seq_keys, seq_values, scale=scale)
        outputs.append(attended[:, 0])
    return torch.stack(outputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "value_dim", "window"),
    [(4, 4, 16, 16, None), (8, 2, 16, 16, None), (6, 2, 12, 12, 11), (4, 4, 24, 12, None)],
    ids=["multi-head", "grouped-query", "sliding-window-odd-dims", "latent-value-dim"],
)
def test_kernel_matches_attention_over_the_gathered_context(
    backend, heads, kv_heads, head_dim, value_dim, window
):
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    keys = torch.randn(kv_heads, NUM_BLOCKS * BLOCK_SIZE, head_dim, generator=generator)
    values = torch.randn(kv_heads, NUM_BLOCKS * BLOCK_SIZE, value_dim, generator=generator)
    ends = [1, 7, 8, 9, 30]
    pool = list(range(NUM_BLOCKS))
    rng.shuffle(pool)
    tables = [[pool.pop() for _ in range(-(-end // BLOCK_SIZE))] for end in ends]
    width = max(len(table) for table in tables)
    padded = torch.tensor([table + [0] * (width - len(table)) for table in tables])
    query = torch.randn(len(ends), heads, head_dim, generator=generator)
    scale = head_dim**-0.5
    ends_tensor = torch.tensor(ends)
    kernel = _kernel(backend)
    output = kernel(query, keys, values, padded, ends_tensor, BLOCK_SIZE, scale, window)
    expected = _reference(query, keys, values, tables, ends_tensor, scale, window)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    # One decode alone (padded to two rows inside the compiled kernel) gets its own row's answer.
    alone = kernel(query[-1:], keys, values, padded[-1:], ends_tensor[-1:], BLOCK_SIZE, scale, window)
    torch.testing.assert_close(alone, expected[-1:], rtol=1e-4, atol=1e-5)


def test_the_compiled_kernel_traces_one_graph_for_every_batch_and_context(monkeypatch):
    """Warmed up once with untied sizes, it never compiles again while serving, whatever the batch
    size or context length (sizes 0 and 1 included, which torch.compile would specialise)."""
    traced = []
    compiled = torch.compile(compiled_decode._attend, dynamic=True, backend=_counting(traced))
    monkeypatch.setattr(compiled_decode, "_compiled_attend", compiled)
    keys = torch.randn(2, NUM_BLOCKS * BLOCK_SIZE, 16)
    with compiled_decode.untied_sizes():
        _decode(keys, batch=2, width=2)
    for batch, width in [(1, 1), (1, 3), (2, 1), (5, 4), (16, 2)]:
        _decode(keys, batch, width)
    assert len(traced) == 1


def _counting(traced: list):
    def backend(graph, example_inputs):
        traced.append(graph)
        return graph.forward

    return backend


def _decode(keys: torch.Tensor, batch: int, width: int) -> torch.Tensor:
    tables = torch.randint(0, NUM_BLOCKS, (batch, width))
    ends = torch.full((batch,), width * BLOCK_SIZE)
    query = torch.randn(batch, 4, keys.shape[2])
    return compiled_decode.paged_decode_attention(query, keys, keys, tables, ends, BLOCK_SIZE, 0.25, None)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_with_the_kernel_matches_generate_under_preemption(tmp_path, backend):
    # Mixed prefill/decode steps, sliding-window layers and recomputation after preemption, all
    # with decodes attending through the kernel.
    model_dir = save_random_model(
        MistralConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, sliding_window=12, max_position_embeddings=256, initializer_range=0.3,
            tie_word_embeddings=False, **byte_level_token_ids(),
        ),
        tmp_path / "mistral",
    )  # fmt: skip
    requests = random_greedy_requests(3, 6, max_prompt_tokens=30, max_new_tokens=12)
    expected = generate_each(load_reference(model_dir), requests)
    settings = {
        "model_path": model_dir, "attention_backend": backend, "max_model_len": 48,
        "max_num_batched_tokens": 16, "kv_cache_block_size": 8,
        "kv_cache_memory_bytes": 64 * 512,  # 64 tokens of 512 bytes: room for about 1.3 sequences
    }  # fmt: skip
    loaded = load_model(ServerConfig(**settings))

    async def body(engine, registry):
        async def one(request: GenerationRequest) -> list[int]:
            return [event.token_id async for event in engine.generate(request)]

        tokens = await asyncio.gather(*(one(request) for request in requests))
        return dict(zip((request.request_id for request in requests), tokens, strict=True)), registry

    outputs, registry = run_with_engine(loaded, body, **settings)
    assert (registry.get_sample_value("llm_preemptions_total") or 0) > 0
    assert outputs == expected
