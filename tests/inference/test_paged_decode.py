"""The paged decode kernels (Triton's, run by its interpreter on the CPU, and the CPU's C++ kernel)
against plain attention over each sequence's context gathered from the same block pool, with
the model's dtype in the cache and with narrower ones (`--kv-cache-dtype`)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import MistralConfig

from inference.config import ServerConfig
from inference.engine import cpu_decode
from inference.engine.attention import LayerCache
from inference.engine.core import EngineCore
from inference.engine.model_runner import pick_decode_kernel
from inference.engine.request import GenerationRequest
from inference.engine.sequence import Sequence
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
        cpu_decode.load()
        return cpu_decode.paged_decode_attention
    from inference.engine.paged_decode import paged_decode_attention

    return paged_decode_attention


def _attend_with(backend, query, keys, values, tables, ends, scale, window):
    """The kernel's output, on the CPU; Triton's runs on the GPU where there is one (its interpreter
    only where there is none)."""
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    inputs = [tensor.to(device) for tensor in (query, keys, values, tables, ends)]
    return _kernel(backend)(*inputs, BLOCK_SIZE, scale, window).cpu()


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
    [
        (4, 4, 16, 16, None),
        (8, 2, 16, 16, None),
        (6, 2, 12, 12, 11),
        (4, 4, 24, 12, None),
        (4, 2, 100, 100, 19),
    ],
    # Heads of 100 take the C++ kernel's every path: groups of four vectors, single ones, a partial one.
    ids=["multi-head", "grouped-query", "sliding-window-odd-dims", "latent-value-dim", "wide-heads"],
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
    output = _attend_with(backend, query, keys, values, padded, ends_tensor, scale, window)
    expected = _reference(query, keys, values, tables, ends_tensor, scale, window)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    # One decode alone gets its own row's answer.
    alone = _attend_with(backend, query[-1:], keys, values, padded[-1:], ends_tensor[-1:], scale, window)
    torch.testing.assert_close(alone, expected[-1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("table", "end", "message"),
    [
        ([NUM_BLOCKS], 3, "block 40 outside the pool of 40"),
        ([-1], 3, "block -1 outside"),
        ([1], BLOCK_SIZE + 1, "context length 9 outside"),
    ],
    ids=["past-the-pool", "negative", "past-the-table"],
)
def test_the_cpu_kernel_refuses_a_context_outside_the_pool(table, end, message):
    """It reads wherever the block table points: a table or length that would read outside the
    pool is an error, not a read of other memory."""
    keys = torch.zeros(2, NUM_BLOCKS * BLOCK_SIZE, 16)
    with pytest.raises(RuntimeError, match=message):
        _attend_with(
            "compiled",
            torch.zeros(1, 2, 16),
            keys,
            keys,
            torch.tensor([table]),
            torch.tensor([end]),
            1.0,
            None,
        )


def test_auto_attends_over_gathered_blocks_where_the_cpu_kernel_cannot_be_built(monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler")
    cpu_decode.load.cache_clear()
    try:
        assert pick_decode_kernel("auto", torch.device("cpu"), BLOCK_SIZE) is None
        assert "no CPU decode kernel (no C++ compiler (no-such-compiler) on the PATH)" in caplog.text
        with pytest.raises(ValueError, match=r"attention_backend=compiled is unavailable: no C\+\+ compiler"):
            pick_decode_kernel("compiled", torch.device("cpu"), BLOCK_SIZE)
    finally:
        cpu_decode.load.cache_clear()  # built again (from the cache) by the next user


def test_the_cpu_kernel_builds_with_the_installed_ninja_outside_an_activated_environment(monkeypatch):
    """`.venv/bin/python -m inference serve` runs with the virtual environment's bin/ off the PATH;
    torch runs ninja by name, so the ninja package's own binary is put on it."""
    import ninja

    monkeypatch.setenv(
        "PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != ninja.BIN_DIR)
    )
    cpu_decode.load.cache_clear()
    cpu_decode.load()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_cpu_kernel_built_for_another_instruction_set_gives_the_same_answers(capability):
    """The kernel's vectors are as wide as the instruction set torch dispatches to (AVX512, AVX2, or
    none: plain loops); the kernel tests, and those of the other CPU kernels, run again in a process
    where torch is told to use a narrower one than this CPU's (`ATEN_CPU_CAPABILITY`), with the
    kernels built for it."""
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    environment = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    kernel_tests = (
        "compiled and (gathered_context or narrower_cache) or widens or half_precision or refuses or step_ops"
    )
    step_ops_tests = Path(__file__).with_name("test_cpu_step_ops.py")
    check = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=environment, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert check.stdout.strip() == capability.upper()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, step_ops_tests, "-k",
         kernel_tests],
        env=environment, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def _small_mistral(directory: Path, **config: object) -> Path:
    """A two-layer random Mistral with GQA, saved under `directory`."""
    return save_random_model(
        MistralConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
            **byte_level_token_ids(), **config,
        ),
        directory / "mistral",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backend", [*BACKENDS, "sdpa"])  # sdpa: the fallback, over gathered blocks
def test_engine_with_the_kernel_matches_generate_under_preemption(tmp_path, backend):
    # Mixed prefill/decode steps, sliding-window layers and recomputation after preemption, all
    # with decodes attending through the kernel.
    model_dir = _small_mistral(tmp_path, sliding_window=12, initializer_range=0.3)
    requests = random_greedy_requests(3, 6, max_prompt_tokens=30, max_new_tokens=12)
    expected = generate_each(load_reference(model_dir), requests)
    settings = {
        "model_path": model_dir, "attention_backend": backend, "max_model_len": 48,
        "max_num_batched_tokens": 16, "kv_cache_block_size": 8,
        "kv_cache_memory_bytes": 64 * 512,  # 64 tokens of 512 bytes: room for about 1.3 sequences
        **({"device": "cpu"} if backend == "compiled" else {}),  # the CPU's kernel, on a GPU machine too
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


# The narrower KV cache dtypes (`--kv-cache-dtype`); Triton's interpreter reads no float8.
NARROW_DTYPES = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
CACHE_DTYPES = [
    *(pytest.param("triton", dtype, marks=needs_triton, id=f"triton-{dtype}")
      for dtype in (NARROW_DTYPES if torch.cuda.is_available() else NARROW_DTYPES[:1])),
    *(pytest.param("compiled", dtype, id=f"compiled-{dtype}") for dtype in NARROW_DTYPES),
]  # fmt: skip


@pytest.mark.parametrize(("backend", "cache_dtype"), CACHE_DTYPES)
def test_a_narrower_cache_is_written_rounded_and_attended_over_widened(backend, cache_dtype):
    """Keys and values stored through `LayerCache.write` in a narrower dtype: the kernel's answer is
    attention over them rounded to that dtype (and saturated at its largest finite value)."""
    generator = torch.Generator().manual_seed(1)
    slots = NUM_BLOCKS * BLOCK_SIZE
    # 20: a whole vector (8 or 16 lanes) and a remainder, each widened on its own path.
    keys = torch.randn(2, slots, 20, generator=generator) * 4
    values = torch.randn(2, slots, 20, generator=generator)
    keys[:, :3] = 1e6  # beyond every float8's range: saturated, never infinite or NaN
    empty = torch.zeros(2, slots, 20, dtype=cache_dtype)
    cache = LayerCache(empty, empty.clone(), BLOCK_SIZE)
    cache.write(torch.arange(slots), keys, values)
    limit = torch.finfo(cache_dtype).max
    rounded_keys = keys.clamp(-limit, limit).to(cache_dtype).float()
    rounded_values = values.to(cache_dtype).float()
    assert torch.isfinite(cache.keys.float()).all()
    tables = [[0, 5, 9], [2], [7, 3]]
    ends = torch.tensor([20, 6, 16])
    padded = torch.tensor([table + [0] * (3 - len(table)) for table in tables])
    query = torch.randn(3, 4, 20, generator=generator)
    output = _attend_with(backend, query, cache.keys, cache.values, padded, ends, 0.25, None)
    expected = _reference(query, rounded_keys, rounded_values, tables, ends, 0.25, None)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cache_dtype", NARROW_DTYPES[1:])
def test_the_cpu_kernel_widens_every_float8_value_exactly(cache_dtype):
    """Each context is one token, so its output is that token's value row as the kernel widened it:
    every bit pattern of the format (subnormals, the largest, infinities and NaNs where it has them),
    over rows of 20 (a whole vector and a remainder, widened on separate paths)."""
    head_dim = 20
    rows = -(-256 // head_dim)
    patterns = torch.zeros(rows * head_dim, dtype=torch.uint8)
    patterns[:256] = torch.arange(256)
    values = torch.zeros(1, NUM_BLOCKS * BLOCK_SIZE, head_dim, dtype=torch.uint8)
    values[0, : rows * BLOCK_SIZE : BLOCK_SIZE] = patterns.view(rows, head_dim)
    values = values.view(cache_dtype)
    keys = torch.zeros_like(values)
    tables = torch.arange(rows)[:, None]  # row r: block r, whose first slot holds its patterns
    query = torch.ones(rows, 1, head_dim)
    output = _attend_with(
        "compiled", query, keys, values, tables, torch.ones(rows, dtype=torch.long), 1.0, None
    )
    expected = values[0, : rows * BLOCK_SIZE : BLOCK_SIZE].float()
    torch.testing.assert_close(output[:, 0], expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_cpu_kernel_attends_in_a_half_precision_models_dtype(dtype):
    """A float16 or bfloat16 model's query and cache, answered in its dtype."""
    generator = torch.Generator().manual_seed(2)
    keys, values = torch.randn(2, 2, NUM_BLOCKS * BLOCK_SIZE, 20, generator=generator).to(dtype)
    tables = [[4, 1], [6]]
    ends = torch.tensor([13, 5])
    query = torch.randn(2, 4, 20, generator=generator).to(dtype)
    output = _attend_with("compiled", query, keys, values, torch.tensor([[4, 1], [6, 0]]), ends, 0.25, None)
    expected = _reference(query.float(), keys.float(), values.float(), tables, ends, 0.25, None)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("attention_backend", "kv_cache_dtype"),
    [("compiled", "bfloat16"), ("compiled", "fp8"), ("compiled", "fp8_e5m2"), ("sdpa", "fp8")],
)
def test_engine_with_a_narrower_cache_holds_more_tokens_and_starts_as_generate(
    tmp_path, attention_backend, kv_cache_dtype
):
    """The cache holds 2x (bfloat16) or 4x (fp8) the tokens of a float32 one in the same budget; a
    prompt's first token comes from its prefill, which attends over its own unrounded keys, so it
    is `generate`'s; later tokens read rounded keys and values and may differ."""
    model_dir = _small_mistral(tmp_path, sliding_window=None)
    requests = random_greedy_requests(5, 6, max_prompt_tokens=30, max_new_tokens=12, min_new_tokens=12)
    expected = generate_each(load_reference(model_dir), requests)
    budget = {
        "model_path": model_dir, "device": "cpu", "kv_cache_memory_bytes": 1 << 20, "kv_cache_block_size": 8,
    }  # fmt: skip
    loaded = load_model(ServerConfig(**budget))
    full = EngineCore(loaded, ServerConfig(**budget, attention_backend=attention_backend))
    narrow_config = ServerConfig(**budget, attention_backend=attention_backend, kv_cache_dtype=kv_cache_dtype)
    narrow = EngineCore(loaded, narrow_config)
    assert narrow.blocks.num_blocks == full.blocks.num_blocks * (4 // narrow.runner.cache_dtype.itemsize)
    assert narrow.runner.caches[0].keys.dtype == narrow.runner.cache_dtype != torch.float32

    for request in requests:
        narrow.add(Sequence.from_request(request, 0.0))
    outputs: dict[str, list[int]] = {request.request_id: [] for request in requests}
    while narrow.sequences:
        for output in narrow.step():
            outputs[output.seq.request_id].append(output.event.token_id)
    for request in requests:
        assert len(outputs[request.request_id]) == request.sampling.max_tokens
        assert outputs[request.request_id][0] == expected[request.request_id][0]
