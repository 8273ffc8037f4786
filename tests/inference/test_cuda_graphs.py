"""Decode steps replayed from CUDA graphs give `generate`'s greedy tokens, under preemption too."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from inference.config import ServerConfig
from inference.engine.cuda_graphs import buckets_up_to
from inference.model_loading import load_model

from .conftest import run_with_engine
from .greedy_reference import generate_each, load_reference, random_greedy_requests

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_buckets_cover_every_batch_size_up_to_the_limit():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(20) == (1, 2, 4, 8, 16, 20)
    assert buckets_up_to(64)[-1] == 64 and buckets_up_to(4096)[-1] == 512


@needs_cuda
@pytest.mark.parametrize("squeezed", [False, True], ids=["roomy", "chunked-and-preempted"])
def test_graph_replayed_decodes_match_generate(tiny_model_dir, squeezed, caplog):
    caplog.set_level(logging.INFO, logger="inference.engine.cuda_graphs")
    requests = random_greedy_requests(5, 12, max_prompt_tokens=60, max_new_tokens=24)
    expected = generate_each(load_reference(tiny_model_dir).cuda(), requests)
    settings = {"model_path": tiny_model_dir, "device": "cuda", "dtype": "float32", "max_model_len": 96}
    if squeezed:
        # KV room for two sequences of max_model_len (512 bytes a token), a budget below most prompts.
        settings |= {"max_num_batched_tokens": 32, "kv_cache_block_size": 8}
        settings["kv_cache_memory_bytes"] = 192 * 512
    loaded = load_model(ServerConfig(**settings))

    async def body(engine, registry):
        async def one(request):
            return [event.token_id async for event in engine.generate(request)]

        tokens = await asyncio.gather(*(one(request) for request in requests))
        return dict(zip((request.request_id for request in requests), tokens, strict=True))

    assert run_with_engine(loaded, body, **settings) == expected
    assert any(record.getMessage() == "captured decode CUDA graphs" for record in caplog.records)
