"""Greedy decoding with prefix caching equals `transformers` `generate` on each request alone.

Requests share prefixes of every length (inside a block, at a block boundary, a whole prompt),
are prefilled in the same step as the request they share with, find their cached blocks evicted
under a squeezed KV budget, get preempted and cancelled. Each case also checks how many prompt
tokens the cache supplied, so that it cannot pass by computing everything from scratch.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from transformers import AutoModelForCausalLM, PreTrainedModel

from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.core import EngineCore
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sequence import Sequence
from inference.model_loading import LoadedModel, load_model
from inference.tiny_model import make_tiny_model, save_random_model

from .conftest import run_with_engine
from .test_exactness import RANDOM_ARCHITECTURES, _kv_bytes_per_token

BLOCK_SIZE = 8
MAX_MODEL_LEN = 96
NEW_TOKENS = 6
_rng = random.Random(13)
SHARED = [_rng.randrange(256) for _ in range(37)]  # four full blocks and five tokens


def _suffix(seed: int, length: int = 5) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(length)]


@pytest.fixture(scope="module", params=["llama", "mistral_sliding_window"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp(request.param)
    if request.param == "llama":
        return make_tiny_model(out_dir)
    return save_random_model(RANDOM_ARCHITECTURES[request.param](), out_dir)


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> LoadedModel:
    return load_model(ServerConfig(model_path=model_dir, max_model_len=MAX_MODEL_LEN))


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()


def _generate(
    model: PreTrainedModel, prompt: list[int], max_new_tokens: int = NEW_TOKENS, ignore_eos: bool = True
) -> list[int]:
    """`generate` greedy; with `ignore_eos` it runs on past the end token, as the engine does then."""
    ids = torch.tensor([prompt])
    eos = {"eos_token_id": None} if ignore_eos else {}
    with torch.no_grad():
        output = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, **eos
        )
    return output[0, len(prompt) :].tolist()


def _core(
    loaded: LoadedModel, model_dir: Path | None = None, num_blocks: int | None = None, **settings: object
) -> EngineCore:
    if model_dir is not None and num_blocks is not None:
        settings["kv_cache_memory_bytes"] = num_blocks * _kv_bytes_per_token(model_dir) * BLOCK_SIZE
    config = ServerConfig(kv_cache_block_size=BLOCK_SIZE, **settings)
    return EngineCore(loaded, config)


def _submit(
    core: EngineCore,
    name: str,
    prompt: list[int],
    max_tokens: int = NEW_TOKENS,
    cache_salt: str | None = None,
) -> Sequence:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    request = GenerationRequest(name, prompt, sampling, cache_salt=cache_salt)
    seq = Sequence.from_request(request, 0.0, core.device)
    core.add(seq)
    return seq


def _run(core: EngineCore, *seqs: Sequence) -> None:
    while not all(seq.is_finished for seq in seqs):
        core.step()


def test_prefixes_of_every_length_are_reused_and_match_generate(loaded, reference):
    core = _core(loaded)
    _run(core, _submit(core, "warm", SHARED))
    prompts = {
        "inside the second block": (SHARED[:13] + _suffix(1), 8),
        "at a block boundary": (SHARED[:16] + _suffix(2), 16),
        "the whole prompt and more": (SHARED + _suffix(3), 32),
        "the same prompt again": (SHARED, 32),
        "a prompt of whole blocks, all cached": (SHARED[:32], 24),  # its last token is recomputed
        "one token": (SHARED[:1], 0),
        "nothing shared": (_suffix(4, 20), 0),
    }
    seqs = {name: _submit(core, name, prompt) for name, (prompt, _) in prompts.items()}
    _run(core, *seqs.values())
    assert {name: seq.num_cached_tokens for name, seq in seqs.items()} == {
        name: cached for name, (_, cached) in prompts.items()
    }
    for name, (prompt, _) in prompts.items():
        assert seqs[name].output_token_ids == _generate(reference, prompt), name


def test_requests_share_cached_blocks_only_under_the_same_cache_salt(loaded):
    core = _core(loaded)
    _run(core, _submit(core, "salted", SHARED, cache_salt="adapter-a"))
    seqs = [
        _submit(core, "unsalted", SHARED),
        _submit(core, "other salt", SHARED, cache_salt="adapter-b"),
        _submit(core, "same salt", SHARED, cache_salt="adapter-a"),
    ]
    _run(core, *seqs)
    assert [seq.num_cached_tokens for seq in seqs] == [0, 0, 32]


def test_generated_tokens_are_cached_for_the_next_turn(loaded, reference):
    core = _core(loaded)
    first = _submit(core, "turn 1", SHARED[:20], max_tokens=20)
    _run(core, first)
    follow_up = first.token_ids + _suffix(5)
    second = _submit(core, "turn 2", follow_up)
    _run(core, second)
    assert second.num_cached_tokens == 32  # the prompt's two blocks and two more of generated tokens
    assert second.output_token_ids == _generate(reference, follow_up)


def test_requests_sharing_blocks_being_prefilled_right_now_match_generate(loaded, reference):
    # One step of 60 tokens: the first prompt whole (42) and 18 of the second, which computes its own
    # copy of the shared blocks; the third, admitted a step later, reuses the first's.
    core = _core(loaded, max_num_batched_tokens=60)
    prompts = [SHARED + _suffix(10 + index) for index in range(3)]
    seqs = [_submit(core, f"together {index}", prompt) for index, prompt in enumerate(prompts)]
    first_step = core.schedule()
    spans = [(chunk.seq, chunk.start, chunk.length) for chunk in first_step]
    assert spans == [(seqs[0], 0, 42), (seqs[1], 0, 18)]
    core.commit(first_step, core.execute(first_step))
    _run(core, *seqs)
    assert [seq.num_cached_tokens for seq in seqs] == [0, 0, 32]  # the four blocks all prompts share
    for seq, prompt in zip(seqs, prompts, strict=True):
        assert seq.output_token_ids == _generate(reference, prompt)


def test_evicted_blocks_are_recomputed_and_the_rest_reused(model_dir, loaded, reference):
    # 12 blocks: room for the first request's five cached blocks only until the second needs them.
    core = _core(loaded, model_dir, num_blocks=12)
    first = _submit(core, "first", SHARED + _suffix(20))  # 42 + 6 tokens: 6 blocks, 5 full
    _run(core, first)
    other = _suffix(21, 66)  # 66 + 6 tokens: 9 blocks, 7 free ones and the first's two tail blocks
    _run(core, _submit(core, "other", other))
    again = _submit(core, "again", SHARED + _suffix(20))
    _run(core, again)
    assert again.num_cached_tokens == 24  # three of the first's five blocks survived
    assert again.output_token_ids == first.output_token_ids == _generate(reference, SHARED + _suffix(20))


def test_a_request_cancelled_mid_step_leaves_nothing_half_cached(loaded, reference):
    core = _core(loaded, max_num_batched_tokens=16)
    prompt = SHARED + _suffix(30)
    cancelled = _submit(core, "cancelled", prompt)
    core.step()  # its first 16 tokens: two blocks computed and cached
    chunks = core.schedule()
    sampled = core.execute(chunks)
    core.abort("cancelled")  # the client leaves while the step runs: its blocks go back uncached
    core.commit(chunks, sampled)
    assert cancelled.is_finished
    follower = _submit(core, "follower", prompt)
    _run(core, follower)
    assert follower.num_cached_tokens == 16
    assert follower.output_token_ids == _generate(reference, prompt)


def test_concurrent_shared_prefixes_under_preemption_match_generate(model_dir, loaded, reference):
    rng = random.Random(17)
    prefixes = [SHARED, _suffix(40, 24), _suffix(41, 9)]
    requests = [
        GenerationRequest(
            f"request-{index}",
            rng.choice(prefixes) + _suffix(50 + index, rng.randint(1, 20)),
            SamplingParams(max_tokens=rng.randint(1, 24), temperature=0.0),
        )
        for index in range(12)
    ]
    settings = {
        "max_model_len": MAX_MODEL_LEN,
        "max_num_batched_tokens": 32,
        "kv_cache_block_size": BLOCK_SIZE,
        # Room for about one and a half of the longest requests.
        "kv_cache_memory_bytes": _kv_bytes_per_token(model_dir) * MAX_MODEL_LEN * 3 // 2,
    }

    async def body(engine: AsyncEngine, registry: CollectorRegistry) -> tuple[dict, float, float]:
        async def one(request: GenerationRequest) -> list[int]:
            return [event.token_id async for event in engine.generate(request)]

        results = await asyncio.gather(*(one(request) for request in requests))
        outputs = {request.request_id: tokens for request, tokens in zip(requests, results, strict=True)}
        sample = registry.get_sample_value
        return outputs, sample("llm_preemptions_total") or 0.0, sample("llm_prefix_cache_hits_total") or 0.0

    outputs, preemptions, hits = run_with_engine(loaded, body, **settings)
    assert preemptions > 0 and hits > 0
    for request in requests:
        expected = _generate(reference, request.prompt_token_ids, request.sampling.max_tokens, False)
        assert outputs[request.request_id] == expected, request.request_id
