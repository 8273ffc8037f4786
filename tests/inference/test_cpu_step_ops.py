"""The CPU's C++ kernels besides decode attention, against what they replace: storing keys and values
into the paged cache (`cpu_decode.store_kv`, against `index_copy_`), RMS normalisation (against
transformers' Llama norm) and the greedy pick (`sampler.argmax`, with the kernel and with the
chunked search that runs where it cannot be built)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from inference.engine import cpu_decode
from inference.engine.attention import LayerCache, index_copy_store
from inference.engine.sampler import argmax

CACHE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.fixture(scope="module", autouse=True)
def _kernels() -> None:
    cpu_decode.load()


@pytest.mark.parametrize("dtype", CACHE_DTYPES, ids=str)
def test_store_kv_writes_what_index_copy_writes(dtype):
    generator = torch.Generator().manual_seed(0)
    kv_heads, slots, head_dim, tokens = 3, 64, 20, 11
    # The model's [T, kv_heads, head_dim] seen as [kv_heads, T, head_dim], as attention passes it.
    keys = (torch.randn(tokens, kv_heads, head_dim, generator=generator) * 300).transpose(0, 1)
    values = torch.randn(kv_heads, tokens, head_dim, generator=generator)
    written = torch.randperm(slots, generator=generator)[:tokens]
    expected, stored = (
        LayerCache(torch.zeros(kv_heads, slots, head_dim, dtype=dtype),
                   torch.zeros(kv_heads, slots, head_dim, dtype=dtype), 8, store)
        for store in (index_copy_store, cpu_decode.store_kv)
    )  # fmt: skip
    for cache in (expected, stored):
        cache.write(written, keys, values)
    for ours, theirs in ((stored.keys, expected.keys), (stored.values, expected.values)):
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))
    assert stored.keys.float().abs().sum() > 0


def test_store_kv_refuses_a_slot_outside_the_cache():
    cache = torch.zeros(2, 16, 8)
    with pytest.raises(RuntimeError, match="token 1: slot 16 outside the cache of 16"):
        cpu_decode.store_kv(cache, torch.tensor([3, 16]), torch.ones(2, 2, 8))
    assert not cache.any()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_the_cpu_argmax_is_torchs_first_maximum(kernel, dtype, monkeypatch):
    monkeypatch.setattr(cpu_decode, "loaded", lambda: kernel)
    generator = torch.Generator().manual_seed(0)
    # Whole chunks and vectors; a short last chunk and a vector remainder; fewer than two chunks.
    for vocab in (32000, 1000, 259, 300, 7):
        # Few distinct values, so that rows have many equal maxima (also across chunks and the tail).
        logits = torch.randint(0, 4, (9, vocab), generator=generator).to(dtype)
        logits[0] = float("-inf")
        logits[1, -1] = 10.0  # the maximum in the last column
        logits[2, vocab // 2] = float("nan")  # NaN counts as the largest, as in torch.argmax
        logits[3, [vocab - 1, vocab // 3]] = float("nan")  # the first NaN
        expected = logits.float().argmax(-1)
        assert torch.equal(argmax(logits), expected), vocab
        # Rows further apart than the vocabulary, as the tensor-parallel gather leaves them.
        assert torch.equal(argmax(torch.cat([logits, logits[:, :5]], dim=1)[:, :vocab]), expected), vocab


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("hidden", [512, 100, 20])  # whole vectors; and a remainder
def test_rms_norm_computes_what_transformers_llama_norm_does(dtype, hidden):
    norm = LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    generator = torch.Generator().manual_seed(hidden)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden, generator=generator))
    # Leading dimensions of the query and key norms of per-head normalisation ([1, T, heads, dim]).
    hidden_states = (torch.randn(1, 7, 3, hidden, generator=generator) * 5).to(dtype)
    with torch.inference_mode():
        expected = norm(hidden_states)
        fused = cpu_decode.rms_norm(hidden_states, norm.weight, norm.variance_epsilon)
    # Its sum of squares adds in another order: the scale may differ in its last bit, and an element
    # round to the neighbouring value of its dtype.
    torch.testing.assert_close(fused, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("size", [1408, 100, 7])  # whole vectors; and a remainder
def test_silu_and_mul_computes_what_a_gated_mlp_does(dtype, size):
    generator = torch.Generator().manual_seed(size)
    gate, up = (torch.randn(2, 5, size, generator=generator) * 4).to(dtype)
    gate[0, :3] = torch.tensor([-100.0, 100.0, 0.0])  # where exp overflows, and zero
    with torch.inference_mode():
        expected = torch.nn.functional.silu(gate) * up
        torch.testing.assert_close(cpu_decode.silu_and_mul(gate, up), expected)


def test_rms_norm_refuses_an_empty_hidden_size():
    with pytest.raises(RuntimeError, match="hidden > 0"):
        cpu_decode.rms_norm(torch.ones(3, 0), torch.ones(0), 1e-6)
