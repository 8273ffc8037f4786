"""What the engine's greedy output is checked against: transformers `generate`, one request at a time,
on random prompts over the byte-level vocabulary every test model shares."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from inference.engine.request import GenerationRequest, SamplingParams

_TEST_VOCAB = 256


def random_greedy_requests(
    seed: int, count: int, max_prompt_tokens: int, max_new_tokens: int, min_new_tokens: int = 1
) -> list[GenerationRequest]:
    """`count` greedy requests of random lengths, the same for the same arguments."""
    rng = random.Random(seed)
    return [
        GenerationRequest(
            request_id=f"request-{index}",
            prompt_token_ids=[rng.randrange(_TEST_VOCAB) for _ in range(rng.randint(1, max_prompt_tokens))],
            sampling=SamplingParams(max_tokens=rng.randint(min_new_tokens, max_new_tokens), temperature=0.0),
        )
        for index in range(count)
    ]


def load_reference(model_dir: Path) -> PreTrainedModel:
    """The saved model as transformers loads it, with its own attention implementation."""
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()


def generate_alone(model: PreTrainedModel, request: GenerationRequest) -> list[int]:
    """The tokens greedy `generate` adds to `request`'s prompt, with the model's own attention and cache."""
    prompt = torch.tensor([request.prompt_token_ids], device=model.device)
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=request.sampling.max_tokens,
        do_sample=False,
    )  # fmt: skip
    return generated[0, prompt.shape[1] :].tolist()


def generate_each(model: PreTrainedModel, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    return {request.request_id: generate_alone(model, request) for request in requests}
