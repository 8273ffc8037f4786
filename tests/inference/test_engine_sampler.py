"""The batched sampler: filters, penalties, biases, end-token suppression, logprobs, counter-based noise."""

from __future__ import annotations

import math

import torch

from inference.engine.grammar import GrammarCompiler, GrammarSpec, GrammarState, fill_bitmask, unpack_bitmask
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sampler import choose, gumbel_noise, process_logits, sample
from inference.engine.sequence import Sequence
from inference.tiny_model import byte_level_tokenizer

VOCAB = 50


def _sequence(prompt: list[int] | None = None, output: list[int] | None = None, **params) -> Sequence:
    request = GenerationRequest("r", prompt or [1], SamplingParams(**params))
    seq = Sequence.from_request(request, arrival_time=0.0)
    seq.token_ids.extend(output or [])
    return seq


def _logits(rows: int = 1, seed: int = 3) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed))


def _draws(logits: torch.Tensor, seeds: range, **params) -> list[int]:
    """One draw per seed, all seeds in one batch."""
    seqs = [_sequence(seed=seed, **params) for seed in seeds]
    return sample(logits.expand(len(seqs), -1).clone(), seqs).token_ids


def test_greedy_takes_the_argmax():
    logits = _logits(2)
    assert sample(logits.clone(), [_sequence(temperature=0.0), _sequence(temperature=0.0)]).token_ids == (
        logits.argmax(-1).tolist()
    )


def test_a_tiny_temperature_is_greedy_and_finite():
    logits = _logits(4)
    seqs = [_sequence(temperature=1e-9, seed=s, top_p=1e-9, min_p=0.5, logprobs=True) for s in range(4)]
    sampled = sample(logits.clone(), seqs)
    assert sampled.token_ids == logits.argmax(-1).tolist()
    assert all(math.isfinite(entry.logprob) for entry in sampled.logprobs)


def test_top_k_of_one_is_greedy():
    assert set(_draws(_logits(), range(20), temperature=5.0, top_k=1)) == {int(_logits().argmax())}


def test_a_tiny_top_p_keeps_only_the_most_likely_token():
    assert set(_draws(_logits(), range(20), temperature=5.0, top_p=1e-6)) == {int(_logits().argmax())}


def test_top_k_draws_stay_within_the_k_most_likely():
    allowed = set(torch.topk(_logits()[0], 5).indices.tolist())
    draws = set(_draws(_logits(), range(50), temperature=5.0, top_k=5))
    assert draws <= allowed and len(draws) > 1


def test_min_p_drops_tokens_far_below_the_most_likely():
    logits = torch.tensor([[4.0, 3.9, 0.0, -1.0] + [-9.0] * (VOCAB - 4)])
    assert set(_draws(logits, range(200), min_p=0.5)) == {0, 1}


def test_draws_follow_the_softmax():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2] + [1e-12] * (VOCAB - 3)]))
    draws = torch.tensor(_draws(logits, range(4000)))
    shares = torch.bincount(draws, minlength=VOCAB)[:3].float() / len(draws)
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


def test_a_seeded_draw_does_not_depend_on_its_batch():
    logits = _logits(3)
    alone = sample(logits[1:2].clone(), [_sequence(seed=7)]).token_ids
    together = sample(logits.clone(), [_sequence(seed=1), _sequence(seed=7), _sequence()]).token_ids
    assert together[1] == alone[0]


def test_logit_bias_of_minus_100_bans_the_token():
    logits = _logits()
    favourite = int(logits.argmax())
    draws = _draws(logits, range(100), temperature=1.0, logit_bias={favourite: -100.0})
    assert favourite not in draws


def test_min_tokens_suppresses_end_tokens_until_reached():
    logits = torch.zeros(2, VOCAB)
    logits[:, 9] = 50.0  # the end-of-sequence token, overwhelmingly likely
    logits[:, 3] = 40.0  # a stop token
    seqs = [
        _sequence(temperature=0.0, min_tokens=2, stop_token_ids=frozenset({3}), output=[5]),
        _sequence(temperature=0.0, min_tokens=2, stop_token_ids=frozenset({3}), output=[5, 6]),
    ]
    assert sample(logits, seqs, eos_token_ids=frozenset({9})).token_ids[0] not in {3, 9}
    eos_likely = torch.zeros(1, VOCAB).index_fill_(1, torch.tensor([9]), 50.0)
    assert sample(eos_likely, seqs[1:], eos_token_ids=frozenset({9})).token_ids == [9]


def test_penalties_match_a_direct_computation():
    logits = _logits()
    prompt, output = [1, 2, 2], [2, 4, 4, 4, 7]
    params = {"presence_penalty": 0.5, "frequency_penalty": 0.25, "repetition_penalty": 1.3}
    processed = process_logits(logits.clone(), [_sequence(prompt, output, **params)])
    expected = logits[0].clone()
    for token in set(prompt + output):
        value = expected[token]
        expected[token] = value / 1.3 if value > 0 else value * 1.3
    for token in set(output):
        expected[token] -= 0.25 * output.count(token) + 0.5
    torch.testing.assert_close(processed[0], expected)


def test_logprobs_are_the_models_own_log_softmax():
    logits = _logits()
    processing = {"logit_bias": {0: 5.0}, "repetition_penalty": 2.0}
    seq = _sequence(temperature=0.0, logprobs=True, top_logprobs=3, **processing)
    sampled = sample(logits.clone(), [seq])
    reference = logits[0].log_softmax(-1)
    entry = sampled.logprobs[0]
    assert entry.logprob == reference[sampled.token_ids[0]].item()
    top = torch.topk(reference, 3)
    assert [token for token, _ in entry.top] == top.indices.tolist()
    assert [value for _, value in entry.top] == top.values.tolist()


def test_grammar_rows_draw_what_an_always_applied_mask_draws() -> None:
    """Masks are applied only to rows whose unmasked choice the grammar rejects; the tokens (greedy and
    seeded draws alike, with processing) must be those of masking every row first, and the logprobs the
    model's own."""
    tokenizer = byte_level_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 20}
    grammar = compiler.compile(GrammarSpec.json_schema(schema))
    settings = [
        {"temperature": 0.0, "logprobs": True},
        {"temperature": 0.0, "repetition_penalty": 1.5},
        {"temperature": 1.0, "seed": 1},
        {"temperature": 2.0, "seed": 2, "logit_bias": {ord("a"): 3.0}},
        {"temperature": 1.0, "seed": 3, "top_p": 0.3},
        {"temperature": 1.0, "seed": 4, "min_p": 0.3},
        {"temperature": 1.0, "seed": 5, "top_k": 3},
    ]

    def constrained_rows() -> list[Sequence]:
        seqs = [_sequence(max_tokens=1000, grammar=grammar, **params) for params in settings]
        for seq in seqs:
            seq.grammar = GrammarState(compiler, grammar)
        return seqs

    speculative, masked = constrained_rows(), constrained_rows()
    generator = torch.Generator().manual_seed(0)
    kept = rejected = 0
    for _ in range(40):
        logits = torch.randn(len(settings), compiler.vocab_size, generator=generator)
        bitmask = fill_bitmask(compiler, [seq.grammar.matcher for seq in masked])
        expected = choose(process_logits(logits.clone(), masked, compiler.eos_token_ids, bitmask), masked)
        unmasked = choose(process_logits(logits.clone(), masked, compiler.eos_token_ids), masked)
        allowed = unpack_bitmask(bitmask, compiler.vocab_size).gather(1, unmasked[:, None])
        kept, rejected = kept + int(allowed.sum()), rejected + int((~allowed).sum())
        sampled = sample(logits.clone(), speculative, compiler.eos_token_ids, compiler)
        assert sampled.token_ids == expected.tolist()
        assert sampled.logprobs[0].logprob == logits[0].log_softmax(-1)[expected[0]].item()
        for seqs in (speculative, masked):
            for seq, token in zip(seqs, expected.tolist(), strict=True):
                seq.token_ids.append(token)
                seq.grammar.accept(token)
    assert kept > 0 and rejected > 0  # both ways were taken


def test_noise_is_finite_for_every_token() -> None:
    # Seed 31 at position 1 gave token 159 the largest 24-bit uniform draw, which rounded to 1.0 in
    # float32: infinite noise, NaN on a masked-out token, and that token drawn.
    seeds = torch.cat([torch.tensor([31]), torch.arange(200)])
    noise = gumbel_noise(seeds, torch.ones_like(seeds), 259)
    assert torch.isfinite(noise).all()
