"""Grammars on the demo tokenizer: token bytes, compile errors and the cache, finishing within a budget."""

from __future__ import annotations

import json

import pytest

from inference.config import ServerConfig
from inference.engine.core import EngineCore
from inference.engine.grammar import GrammarCompiler, GrammarSpec, GrammarState
from inference.engine.request import GenerationRequest, InvalidGrammarError, SamplingParams
from inference.engine.sequence import Sequence
from inference.model_loading import LoadedModel
from inference.tiny_model import byte_level_tokenizer

from .grammar_walk import random_constrained_output


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


@pytest.mark.parametrize(
    ("regex", "text", "allowed"),
    [
        (r"\d", "3", True),
        (r"\d", "\N{NKO DIGIT THREE}", False),  # a decimal digit to Unicode, not to JavaScript
        (r"[a-f\d]", "\N{ARABIC-INDIC DIGIT FIVE}", False),
        (r"[^\d]", "\N{NKO DIGIT THREE}", True),
        (r"\D", "\N{NKO DIGIT THREE}", True),
        (r"\w", "_", True),
        (r"\w", "\N{LATIN SMALL LETTER E WITH ACUTE}", False),
        (r"\W", "\N{LATIN SMALL LETTER E WITH ACUTE}", True),
        (r"\\d", "\\", True),  # an escaped backslash, then the letter d
    ],
)
def test_regex_classes_mean_what_they_mean_in_javascript(
    compiler: GrammarCompiler, regex: str, text: str, allowed: bool
) -> None:
    """vLLM's default backend and JSON Schema read `\\d` and `\\w` as ASCII classes; a client's regex
    must not let the model write another script's digits where it asked for digits."""
    state = GrammarState(compiler, compiler.compile(GrammarSpec("regex", regex)))
    first_byte = text.encode()[0]
    token = next(token for token in range(256) if compiler.token_bytes(token) == bytes([first_byte]))
    assert state.allows(token) is allowed


@pytest.mark.parametrize("budget", [3, 8, 20])
def test_random_walks_end_as_valid_json_within_the_budget(compiler: GrammarCompiler, budget: int) -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    grammar = compiler.compile(GrammarSpec.json_schema(schema))
    for seed in range(20):
        output = random_constrained_output(compiler, grammar, budget, seed)
        assert isinstance(json.loads(compiler.tokenizer.decode_bytes(output)), dict)


def test_a_token_that_opens_more_than_the_budget_can_close_is_not_taken(tiny_loaded: LoadedModel) -> None:
    # Each item is 28 mandatory tokens once its `<` is taken. The model is made to want `<` whenever it
    # can: after one item, 21 tokens are left, too few for a second, so the output must end there.
    core = EngineCore(tiny_loaded, ServerConfig(max_num_seqs=1))
    grammar = core.compile_grammar(GrammarSpec("regex", "(<c>x{25})+"))
    (opener,) = tiny_loaded.tokenizer.encode("<", add_special_tokens=False)
    sampling = SamplingParams(max_tokens=50, temperature=0.0, logit_bias={opener: 100.0}, grammar=grammar)
    seq = Sequence.from_request(GenerationRequest("r", [1, 2, 3], sampling), 0.0, core.grammars)
    core.add(seq)
    while not seq.is_finished:
        core.step()
    text = tiny_loaded.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True)
    assert (text, seq.finish_reason) == ("<c>" + "x" * 25, "stop")
