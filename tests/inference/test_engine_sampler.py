"""Sampling filters and per-request randomness."""

from __future__ import annotations

import torch

from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sampler import sample
from inference.engine.sequence import Sequence


def _sequence(**params) -> Sequence:
    request = GenerationRequest("r", [1], SamplingParams(**params))
    return Sequence.from_request(request, arrival_time=0.0, device=torch.device("cpu"))


def _logits(rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, 50, generator=torch.Generator().manual_seed(3))


def test_greedy_takes_the_argmax():
    logits = _logits(2)
    tokens, _ = sample(logits, [_sequence(temperature=0.0), _sequence(temperature=0.0)])
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_of_one_is_greedy():
    logits = _logits()
    draws = {sample(logits, [_sequence(seed=seed, temperature=5.0, top_k=1)])[0][0] for seed in range(20)}
    assert draws == {int(logits.argmax())}


def test_a_tiny_top_p_keeps_only_the_most_likely_token():
    logits = _logits()
    draws = {sample(logits, [_sequence(seed=seed, temperature=5.0, top_p=1e-6)])[0][0] for seed in range(20)}
    assert draws == {int(logits.argmax())}


def test_top_k_draws_stay_within_the_k_most_likely():
    logits = _logits()
    allowed = set(torch.topk(logits[0], 5).indices.tolist())
    draws = {sample(logits, [_sequence(seed=seed, temperature=5.0, top_k=5)])[0][0] for seed in range(50)}
    assert draws <= allowed and len(draws) > 1


def test_logprob_is_the_chosen_tokens_log_softmax():
    logits = _logits()
    tokens, logprobs = sample(logits, [_sequence(temperature=0.0, logprobs=True)])
    assert logprobs[0] == logits[0].log_softmax(-1)[tokens[0]].item()
