"""Random output under a grammar, drawn by the engine's own sampler: the tests' stand-in for a model."""

from __future__ import annotations

import torch

from inference.engine.grammar import CompiledGrammar, GrammarCompiler
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sampler import sample
from inference.engine.sequence import Sequence


def random_constrained_output(
    compiler: GrammarCompiler, grammar: CompiledGrammar, budget: int, seed: int
) -> list[int]:
    """Up to `budget` tokens, each drawn uniformly (equal logits, seeded noise) from what `grammar`
    allows, as the engine would draw them; the end-of-sequence token, if drawn, left out."""
    sampling = SamplingParams(max_tokens=budget, seed=seed, grammar=grammar)
    seq = Sequence.from_request(GenerationRequest("walk", [0], sampling), 0.0, compiler)
    while seq.remaining_tokens > 0:
        logits = torch.zeros(1, compiler.vocab_size)
        token = sample(logits, [seq], compiler.eos_token_ids, compiler).token_ids[0]
        if token in compiler.eos_token_ids:
            break
        seq.token_ids.append(token)
        if seq.grammar.accept(token):
            break
    return seq.output_token_ids
