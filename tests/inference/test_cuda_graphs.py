"""Decode steps replayed from CUDA graphs give `generate`'s greedy tokens, under preemption too."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.config import ServerConfig
from inference.engine.cuda_graphs import buckets_up_to
from inference.engine.request import GenerationRequest, SamplingParams
from inference.model_loading import load_model

from .conftest import run_with_engine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_buckets_cover_every_batch_size_up_to_the_limit():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(20) == (1, 2, 4, 8, 16, 20)
    assert buckets_up_to(64)[-1] == 64 and buckets_up_to(4096)[-1] == 512


@needs_cuda
@pytest.mark.parametrize("squeezed", [False, True], ids=["roomy", "chunked-and-preempted"])
def test_graph_replayed_decodes_match_generate(tiny_model_dir, squeezed, caplog):
    caplog.set_level(logging.INFO, logger="inference.engine.cuda_graphs")
    rng = random.Random(5)
    requests = [
        GenerationRequest(
            f"request-{index}",
            [rng.randrange(256) for _ in range(rng.randint(1, 60))],
            SamplingParams(max_tokens=rng.randint(1, 24), temperature=0.0),
        )
        for index in range(12)
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).cuda().eval()
    expected = {}
    for request in requests:
        prompt = torch.tensor([request.prompt_token_ids], device="cuda")
        generated = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=request.sampling.max_tokens,
            do_sample=False,
        )  # fmt: skip
        expected[request.request_id] = generated[0, prompt.shape[1] :].tolist()
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
