"""Grammars on the demo tokenizer: token bytes, compile errors and the cache, finishing within a budget."""

from __future__ import annotations

import json
import random

import pytest

from inference.engine.grammar import GrammarCompiler, GrammarSpec, GrammarState, fill_bitmask, unpack_bitmask
from inference.engine.request import InvalidGrammarError
from inference.tiny_model import byte_level_tokenizer


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    tokenizer = byte_level_tokenizer()
    return GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def test_every_byte_token_has_its_own_byte(compiler: GrammarCompiler) -> None:
    tokenizer = byte_level_tokenizer()
    owned = {compiler.token_bytes(token) for token in range(256)}
    assert owned == {bytes([byte]) for byte in range(256)}
    assert compiler.token_bytes(tokenizer.eos_token_id) == tokenizer.eos_token.encode()


def test_a_bad_regex_is_refused_and_a_good_one_cached(compiler: GrammarCompiler) -> None:
    with pytest.raises(InvalidGrammarError):
        compiler.compile(GrammarSpec("regex", "(["))
    spec = GrammarSpec("regex", "[0-9]+")
    assert compiler.compile(spec) is compiler.compile(spec)


@pytest.mark.parametrize("budget", [3, 8, 20])
def test_random_walks_end_as_valid_json_within_the_budget(compiler: GrammarCompiler, budget: int) -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    grammar = compiler.compile(GrammarSpec.json_schema(schema))
    rng = random.Random(budget)
    for _ in range(20):
        state, output = GrammarState(compiler, grammar), []
        for remaining in range(budget, 0, -1):
            allowed = unpack_bitmask(fill_bitmask(compiler, [(0, state, remaining)], 1), compiler.vocab_size)
            token = rng.choice(allowed[0].nonzero()[:, 0].tolist())
            if token in compiler.eos_token_ids:
                break
            output.append(token)
            if state.accept(token):
                break
        assert isinstance(json.loads(compiler.tokenizer.decode_bytes(output)), dict)
