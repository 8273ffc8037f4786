"""Greedy decoding with LoRA adapters through the engine equals `generate` on the peft-merged model.

One concurrent batch mixes requests for three random adapters (different ranks, targets in the
attention and the MLP, rsLoRA) and for the base model, so every step runs several adapters at once;
each request must give, token for token, what `generate` gives on the base model with that adapter
merged by peft. Also with preemption, on a second architecture, and on an int8 base.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from peft import PeftModel
from prometheus_client import CollectorRegistry
from transformers import AutoModelForCausalLM, PreTrainedModel

from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.request import GenerationRequest, SamplingParams
from inference.lora import one_adapter
from inference.lora.random_adapter import LLAMA_TARGETS, save_random_adapter
from inference.model_loading import load_model
from inference.tiny_model import make_tiny_model, save_random_model

from .conftest import run_with_engine
from .greedy_reference import generate_alone, random_greedy_requests
from .test_exactness import RANDOM_ARCHITECTURES, _kv_bytes_per_token

NUM_REQUESTS = 16
MAX_PROMPT_TOKENS = 60
MAX_NEW_TOKENS = 24

ADAPTERS = {
    "attention": {"rank": 4, "target_modules": ["q_proj", "v_proj"]},
    "mlp": {"rank": 8, "lora_alpha": 32, "target_modules": ["gate_proj", "up_proj", "down_proj"],
            "use_rslora": True},
    "everywhere": {"rank": 16, "lora_alpha": 8, "target_modules": list(LLAMA_TARGETS)},
}  # fmt: skip
# The base model and each adapter in turn, so that every step mixes them.
MODEL_CYCLE = [None, *ADAPTERS]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp(f"lora-{request.param}")
    if request.param == "llama":
        return make_tiny_model(out_dir)
    return save_random_model(RANDOM_ARCHITECTURES[request.param](), out_dir)


def _base(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def adapter_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = _base(model_dir)
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: save_random_adapter(base, root / name, seed=seed, **options)
        for seed, (name, options) in enumerate(ADAPTERS.items())
    }


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    return [
        replace(request, lora_name=MODEL_CYCLE[index % len(MODEL_CYCLE)])
        for index, request in enumerate(
            random_greedy_requests(11, NUM_REQUESTS, MAX_PROMPT_TOKENS, MAX_NEW_TOKENS)
        )
    ]


@pytest.fixture(scope="module")
def merged_models(model_dir, adapter_dirs) -> dict[str | None, PreTrainedModel]:
    """The base model (key None), and the base with each adapter merged into it by peft."""
    models = {None: _base(model_dir)}
    for name, directory in adapter_dirs.items():
        models[name] = PeftModel.from_pretrained(_base(model_dir), directory).merge_and_unload().eval()
    return models


@pytest.fixture(scope="module")
def expected(merged_models, requests) -> dict[str, list[int]]:
    return {
        request.request_id: generate_alone(merged_models[request.lora_name], request) for request in requests
    }


def _run_engine(
    requests: list[GenerationRequest], **settings: object
) -> tuple[dict[str, list[int]], float]:
    loaded = load_model(ServerConfig(**settings))

    async def body(engine: AsyncEngine, registry: CollectorRegistry) -> tuple[dict[str, list[int]], float]:
        async def one(request: GenerationRequest) -> list[int]:
            return [event.token_id async for event in engine.generate(request)]

        results = await asyncio.gather(*(one(request) for request in requests))
        outputs = {request.request_id: tokens for request, tokens in zip(requests, results, strict=True)}
        return outputs, registry.get_sample_value("llm_preemptions_total") or 0.0

    return run_with_engine(loaded, body, **settings)


def _lora_modules(adapter_dirs: dict[str, Path]) -> list[str]:
    return [f"{name}={directory}" for name, directory in adapter_dirs.items()]


def test_adapters_change_the_output(model_dir, requests, expected):
    # Otherwise the exactness below would hold for an engine that ignored the adapters.
    base = _base(model_dir)
    changed = {
        request.lora_name
        for request in requests
        if request.lora_name is not None and generate_alone(base, request) != expected[request.request_id]
    }
    assert changed == set(ADAPTERS)


def test_mixed_adapter_batch_matches_generate_on_merged_models(model_dir, adapter_dirs, requests, expected):
    outputs, _ = _run_engine(requests, model_path=model_dir, lora_modules=_lora_modules(adapter_dirs))
    assert outputs == expected


def test_mixed_adapter_batch_matches_under_preemption(model_dir, adapter_dirs, requests, expected):
    # KV room for about 1.5 of the longest requests, and a token budget below most prompts.
    max_model_len = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS
    outputs, preemptions = _run_engine(
        requests,
        model_path=model_dir,
        lora_modules=_lora_modules(adapter_dirs),
        max_model_len=max_model_len,
        max_num_batched_tokens=32,
        kv_cache_block_size=8,
        kv_cache_memory_bytes=_kv_bytes_per_token(model_dir) * max_model_len * 3 // 2,
    )
    assert preemptions > 0
    assert outputs == expected


def test_int8_base_with_float_adapters_matches_generate_with_one_adapter(tiny_model_dir, tmp_path, requests):
    # Weight-only int8: int8-dynamic quantizes each step's activations with one scale for the whole
    # batch, so its base outputs depend on the batch, adapters or not.
    adapter_dirs = {
        name: save_random_adapter(_base(tiny_model_dir), tmp_path / name, seed=seed, **options)
        for seed, (name, options) in enumerate(ADAPTERS.items())
    }
    settings = {"model_path": tiny_model_dir, "quantization": "int8-weight-only"}
    settings["lora_modules"] = _lora_modules(adapter_dirs)
    reference = load_model(ServerConfig(**settings))
    expected = {}
    for request in requests:
        with one_adapter(reference.adapters.id_of(request.lora_name)):
            expected[request.request_id] = generate_alone(reference.model, request)
    base_outputs = {request.request_id: generate_alone(reference.model, request) for request in requests}

    outputs, _ = _run_engine(requests, **settings)
    assert outputs == expected
    changed = {
        request.lora_name
        for request in requests
        if request.lora_name is not None and base_outputs[request.request_id] != expected[request.request_id]
    }
    assert changed == set(ADAPTERS)


def test_the_prefix_cache_is_keyed_by_adapter(model_dir, adapter_dirs, merged_models, requests):
    # The same prompt for the base and each adapter in turn, then for the first adapter again: each
    # model id reuses only the KV blocks computed with its own weights.
    prompt = max(requests, key=lambda request: len(request.prompt_token_ids)).prompt_token_ids
    names = [*MODEL_CYCLE, MODEL_CYCLE[1]]
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    same_prompt = [
        GenerationRequest(f"shared-{index}", prompt, greedy, lora_name=name)
        for index, name in enumerate(names)
    ]
    settings = {"model_path": model_dir, "lora_modules": _lora_modules(adapter_dirs)}
    settings |= {"kv_cache_block_size": 8, "enable_prefix_caching": True}
    loaded = load_model(ServerConfig(**settings))

    async def body(engine: AsyncEngine, registry: CollectorRegistry) -> list[tuple[int, list[int]]]:
        results = []
        for request in same_prompt:  # one after the other, so that each could find the others' blocks
            events = [event async for event in engine.generate(request)]
            results.append((events[0].cached_prompt_tokens, [event.token_id for event in events]))
        return results

    results = run_with_engine(loaded, body, **settings)
    cached = [cached for cached, _ in results]
    assert cached[:-1] == [0] * len(MODEL_CYCLE)
    assert cached[-1] == (len(prompt) - 1) // 8 * 8
    assert [tokens for _, tokens in results] == [
        generate_alone(merged_models[request.lora_name], request) for request in same_prompt
    ]
