"""Greedy decoding with penalties through the engine equals `transformers` `generate` on each request alone.

Requests with and without penalties run concurrently in one batch. Repetition penalties are
transformers' own (`repetition_penalty=`); presence and frequency penalties, which transformers
does not have, are computed directly by a logits processor written from OpenAI's definition.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.request import GenerationRequest, SamplingParams
from inference.model_loading import load_model

from .conftest import run_with_engine

PENALTIES = [
    {},
    {"repetition_penalty": 1.3},
    {"repetition_penalty": 2.0},
    {"repetition_penalty": 0.7},
    {"presence_penalty": 1.5},
    {"frequency_penalty": 0.8},
    {"presence_penalty": -0.5, "frequency_penalty": 1.2, "repetition_penalty": 1.1},
]


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the generated tokens, one row at a time."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row in range(scores.shape[0]):
            generated = input_ids[row, self.prompt_length :].tolist()
            for token in set(generated):
                scores[row, token] -= self.frequency * generated.count(token) + self.presence
        return scores


def _requests() -> list[GenerationRequest]:
    rng = random.Random(11)
    return [
        GenerationRequest(
            f"request-{index}",
            [rng.randrange(256) for _ in range(rng.randint(4, 40))],
            SamplingParams(max_tokens=rng.randint(8, 30), temperature=0.0, **penalties),
        )
        for index, penalties in enumerate(PENALTIES * 2)
    ]


def _generate_alone(model: AutoModelForCausalLM, request: GenerationRequest) -> list[int]:
    params = request.sampling
    prompt = torch.tensor([request.prompt_token_ids])
    processors = LogitsProcessorList()
    if params.presence_penalty or params.frequency_penalty:
        processors.append(OpenAIPenalties(prompt.shape[1], params.presence_penalty, params.frequency_penalty))
    generated = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=params.max_tokens,
        do_sample=False,
        repetition_penalty=params.repetition_penalty,
        logits_processor=processors,
    )
    return generated[0, prompt.shape[1] :].tolist()


@pytest.mark.slow
def test_penalized_greedy_batch_matches_generate_alone(tiny_model_dir: Path) -> None:
    requests = _requests()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    expected = {request.request_id: _generate_alone(model, request) for request in requests}

    async def body(engine: AsyncEngine, _: object) -> dict[str, list[int]]:
        async def one(request: GenerationRequest) -> list[int]:
            return [event.token_id async for event in engine.generate(request)]

        outputs = await asyncio.gather(*(one(request) for request in requests))
        return {request.request_id: tokens for request, tokens in zip(requests, outputs, strict=True)}

    outputs = run_with_engine(load_model(ServerConfig(model_path=tiny_model_dir)), body)
    assert outputs == expected
    # The penalties changed something, so the comparison is not of plain greedy decoding alone.
    plain = {request.request_id: _generate_alone(model, _plain(request)) for request in requests}
    assert sum(plain[key] != expected[key] for key in expected) >= len(requests) // 2


def _plain(request: GenerationRequest) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=request.sampling.max_tokens, temperature=0.0)
    return GenerationRequest(request.request_id, request.prompt_token_ids, sampling)
