"""Next-token choice per sequence: greedy, or temperature / top-k / top-p with the request's own RNG."""

from __future__ import annotations

import torch

from inference.engine.sequence import Sequence


def _filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probabilities = sorted_logits.softmax(-1)
    # Drop a token when the tokens more likely than it already cover top_p. The first always stays,
    # even when top_p rounds to 0 in float32 (1e-300), so the distribution is never empty.
    drop_sorted = probabilities.cumsum(-1) - probabilities >= top_p
    drop_sorted[0] = False
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float | None]]:
    """One token per row of `logits` `[S, vocab]`, and its log-probability where the request asked."""
    chosen = logits.argmax(-1)
    for row, seq in enumerate(seqs):
        params = seq.sampling
        if params.greedy:
            continue
        scaled = _filter_top_p(_filter_top_k(logits[row] / params.temperature, params.top_k), params.top_p)
        chosen[row] = torch.multinomial(scaled.softmax(-1), 1, generator=seq.generator)[0]
    token_ids = chosen.tolist()
    logprobs: list[float | None] = [None] * len(seqs)
    wants_logprobs = [row for row, seq in enumerate(seqs) if seq.sampling.logprobs]
    if wants_logprobs:
        rows = torch.tensor(wants_logprobs, device=logits.device)
        values = logits[rows].log_softmax(-1).gather(1, chosen[rows, None])[:, 0].tolist()
        for row, value in zip(wants_logprobs, values, strict=True):
            logprobs[row] = value
    return token_ids, logprobs
