"""Tensor parallelism on CPU: gloo, two processes. The split model answers as the single-process engine
does, token for token, for a concurrent batch, under preemption and cancellation, and from int8
checkpoints; a model that does not split evenly is refused before any process starts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from prometheus_client import CollectorRegistry
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Phi3Config

from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.request import EngineNotReadyError, GenerationRequest, SamplingParams
from inference.model_loading import load_model
from inference.parallel.loading import checkpoint_files, empty_model, load_shard
from inference.parallel.sharding import (
    HeadsNotDivisibleError,
    RowParallelLinear,
    TensorParallelError,
    VocabParallelEmbedding,
    plan_splits,
)
from inference.quantize import quantize_directory
from inference.quantize.int8_linear import quantize_per_channel
from inference.tiny_model import byte_level_token_ids, make_tiny_model, save_random_model

from .conftest import run_with_engine
from .greedy_reference import random_greedy_requests
from .test_exactness import RANDOM_ARCHITECTURES

RANKS = 2
NUM_REQUESTS = 8
MAX_PROMPT_TOKENS = 40
MAX_NEW_TOKENS = 10

# The demo Llama has 4 attention heads over 2 KV heads: GQA with exactly one KV head per rank.
# Qwen2 adds biases on q/k/v; GPT-NeoX has one fused QKV projection and a parallel residual.
MODELS = ["llama_gqa_kv_heads_equal_ranks", "qwen2", "gpt_neox"]


@pytest.fixture(scope="module", params=MODELS)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp(request.param)
    if request.param in RANDOM_ARCHITECTURES:
        return save_random_model(RANDOM_ARCHITECTURES[request.param](), out_dir)
    return make_tiny_model(out_dir)


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    return random_greedy_requests(17, NUM_REQUESTS, MAX_PROMPT_TOKENS, MAX_NEW_TOKENS, min_new_tokens=2)


def _generate(
    model_dir: Path,
    requests: list[GenerationRequest],
    cancel: frozenset[str] = frozenset(),
    split_vocabulary: bool = True,
    **settings: object,
) -> tuple[dict[str, list[int]], float]:
    """Each request's tokens through a fresh engine (requests in `cancel` are closed after their first
    token), and how many preemptions the engine reported."""
    settings = {"model_path": model_dir, **settings}
    loaded = load_model(ServerConfig(**settings), split_vocabulary=split_vocabulary)

    async def one(engine: AsyncEngine, request: GenerationRequest) -> list[int]:
        stream = engine.generate(request)
        tokens = []
        async for event in stream:
            tokens.append(event.token_id)
            if request.request_id in cancel:
                await stream.aclose()
        return tokens

    async def body(engine: AsyncEngine, registry: CollectorRegistry) -> tuple[dict[str, list[int]], float]:
        results = await asyncio.gather(*(one(engine, request) for request in requests))
        outputs = {request.request_id: tokens for request, tokens in zip(requests, results, strict=True)}
        return outputs, registry.get_sample_value("llm_preemptions_total") or 0.0

    try:
        return run_with_engine(loaded, body, **settings)
    finally:
        loaded.close()


@pytest.fixture(scope="module")
def single_process(model_dir: Path, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    outputs, _ = _generate(model_dir, requests)
    return outputs


def test_split_model_answers_a_concurrent_batch_as_the_single_process_engine(
    model_dir, requests, single_process
):
    outputs, _ = _generate(model_dir, requests, tensor_parallel_size=RANKS)
    assert outputs == single_process


def _kv_bytes_per_token_per_rank(model_dir: Path) -> int:
    config = empty_model(model_dir, torch.float32).config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * kv_heads // RANKS * head_dim * torch.float32.itemsize


@pytest.mark.slow
def test_split_model_answers_as_the_single_process_engine_under_preemption_and_cancellation(
    model_dir, requests, single_process
):
    max_model_len = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS
    cancelled = frozenset(request.request_id for request in requests[::3])
    outputs, preemptions = _generate(
        model_dir,
        requests,
        cancel=cancelled,
        tensor_parallel_size=RANKS,
        max_model_len=max_model_len,
        max_num_batched_tokens=24,
        kv_cache_block_size=4,
        # Each rank's KV cache holds the longest request and one block more.
        kv_cache_memory_bytes=_kv_bytes_per_token_per_rank(model_dir) * (max_model_len + 4),
    )
    assert preemptions > 0
    for request_id, tokens in outputs.items():
        if request_id in cancelled:
            assert tokens == single_process[request_id][:1]
        else:
            assert tokens == single_process[request_id]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tp-llama"))


def test_each_rank_holds_only_its_slices_of_the_split_layers(llama_dir):
    checkpoint = load_file(llama_dir / "model.safetensors")
    model = empty_model(llama_dir, torch.float32)
    files = checkpoint_files(llama_dir, None)
    shard = load_shard(model, plan_splits(model, RANKS), files, rank=1, world_size=RANKS, dtype=torch.float32,
                       scheme=None, int8_in_checkpoint=frozenset())  # fmt: skip
    layer = "model.layers.0.self_attn"
    q_proj, o_proj = checkpoint[f"{layer}.q_proj.weight"], checkpoint[f"{layer}.o_proj.weight"]
    attention = shard.get_submodule(layer)
    assert torch.equal(attention.q_proj.weight, q_proj[q_proj.shape[0] // RANKS :])
    assert isinstance(attention.o_proj, RowParallelLinear)
    assert torch.equal(attention.o_proj.shard.weight, o_proj[:, o_proj.shape[1] // RANKS :])
    # 259 token ids: rank 0 holds 130 rows of the embedding and of the LM head, rank 1 the other 129.
    embedding, lm_head = checkpoint["model.embed_tokens.weight"], checkpoint["lm_head.weight"]
    assert isinstance(shard.get_input_embeddings(), VocabParallelEmbedding)
    assert torch.equal(shard.get_input_embeddings().weight, embedding[130:])
    assert torch.equal(shard.get_output_embeddings().weight, lm_head[130:])
    # Only the norms are whole on every rank.
    norms = sum(tensor.numel() for name, tensor in checkpoint.items() if "norm" in name)
    projections = sum(tensor.numel() for name, tensor in checkpoint.items() if "proj" in name)
    held = sum(parameter.numel() for parameter in shard.parameters())
    assert held == norms + projections // RANKS + embedding[130:].numel() + lm_head[130:].numel()


def test_replicated_embedding_and_head_answer_as_the_single_process_engine(llama_dir, requests):
    replicated, _ = _generate(llama_dir, requests, split_vocabulary=False, tensor_parallel_size=RANKS)
    assert replicated == _generate(llama_dir, requests)[0]


def test_int8_checkpoint_split_over_ranks_answers_as_served_whole(llama_dir, requests, tmp_path):
    int8_dir = quantize_directory(llama_dir, tmp_path / "int8", scheme="int8-weight-only")
    whole, _ = _generate(int8_dir, requests)
    split, _ = _generate(int8_dir, requests, tensor_parallel_size=RANKS)
    assert split == whole


def test_int8_at_load_gives_a_row_split_layer_the_scales_of_its_whole_rows(llama_dir):
    model = empty_model(llama_dir, torch.float32)
    files = checkpoint_files(llama_dir, None)
    shard = load_shard(model, plan_splits(model, RANKS), files, rank=1, world_size=RANKS, dtype=torch.float32,
                       scheme="int8-weight-only", int8_in_checkpoint=frozenset())  # fmt: skip
    down = load_file(llama_dir / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    int8, scale = quantize_per_channel(down)
    row_split = shard.get_submodule("model.layers.0.mlp.down_proj").shard
    assert torch.equal(row_split.weight, int8[:, down.shape[1] // RANKS :])
    assert torch.equal(row_split.weight_scale, scale)


def test_int8_at_load_split_over_ranks_answers_as_served_whole(llama_dir, requests):
    # Row-split layers are quantized whole, then sliced: each row's scale is that of the whole row.
    whole, _ = _generate(llama_dir, requests, quantization="int8-weight-only")
    split, _ = _generate(llama_dir, requests, quantization="int8-weight-only", tensor_parallel_size=RANKS)
    assert split == whole


def test_head_counts_that_do_not_divide_are_refused_before_any_process_starts(llama_dir):
    # Other tests' servers may still run their engine processes: none may be added.
    before = set(multiprocessing.active_children())
    with pytest.raises(HeadsNotDivisibleError, match=r"num_attention_heads = 4 is not divisible by .*=3"):
        load_model(ServerConfig(model_path=llama_dir, tensor_parallel_size=3))
    assert set(multiprocessing.active_children()) == before


def test_a_layer_the_plan_does_not_know_is_refused():
    # Phi-3 fuses q, k and v (of different widths under GQA) into one `qkv_proj`: no contiguous split.
    config = Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, **byte_level_token_ids())  # fmt: skip
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(TensorParallelError, match="qkv_proj"):
        plan_splits(model, RANKS)


def test_a_killed_worker_fails_the_request_in_flight_and_takes_readiness_down(llama_dir):
    loaded = load_model(ServerConfig(model_path=llama_dir, tensor_parallel_size=RANKS))
    long_request = GenerationRequest(
        "long", [1, 2, 3], SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    )

    async def consume(stream: AsyncIterator[object]) -> None:
        async for _ in stream:
            pass

    async def body(engine: AsyncEngine, registry: CollectorRegistry) -> tuple[bool, bool, float | None]:
        ready_before = engine.ready
        stream = engine.generate(long_request)
        await anext(stream)
        loaded.workers.processes[0].kill()
        with pytest.raises(EngineNotReadyError):
            await asyncio.wait_for(consume(stream), timeout=60)
        return ready_before, engine.ready, registry.get_sample_value("llm_tensor_parallel_ranks_up")

    try:
        ready_before, ready_after, ranks_up = run_with_engine(loaded, body, tensor_parallel_size=RANKS)
    finally:
        loaded.close()
    assert (ready_before, ready_after, ranks_up) == (True, False, RANKS - 1)
    # The broken group is gone: the same process can split a model again.
    load_model(ServerConfig(model_path=llama_dir, tensor_parallel_size=RANKS)).close()


def test_a_worker_that_dies_while_starting_fails_the_load_instead_of_waiting_for_it(llama_dir):
    # Other tests' servers may still run their engine processes: only the new workers are killed.
    others = set(multiprocessing.active_children())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(load_model, ServerConfig(model_path=llama_dir, tensor_parallel_size=RANKS))
        while not (workers := set(multiprocessing.active_children()) - others):
            time.sleep(0.001)
        for worker in workers:
            worker.kill()  # still importing torch: it has not reached the rendezvous yet
        with pytest.raises(RuntimeError, match="failed to start"):
            loading.result(timeout=60)
