"""Incremental detokenization and stop strings, on the demo model's real byte-level tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from inference.api.text_output import IncrementalDetokenizer, StopStringMatcher, text_decoder
from inference.tiny_model import byte_level_tokenizer

# Multi-byte characters: each is several byte tokens, so most single tokens are partial UTF-8.
TEXT = "naïve café — 你好, мир! 🙂"


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def test_deltas_concatenate_to_the_full_decode(tokenizer) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids=[])
    deltas = [detokenizer.push(token_id) for token_id in ids]
    assert "".join(deltas) + detokenizer.flush() == TEXT


def test_no_delta_shows_a_partial_character(tokenizer) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids=[])
    deltas = [detokenizer.push(token_id) for token_id in ids]
    assert all("\ufffd" not in delta for delta in deltas)


def test_prompt_context_is_not_repeated_in_the_output(tokenizer) -> None:
    prompt = tokenizer("question: ")["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids=prompt)
    deltas = [detokenizer.push(token_id) for token_id in tokenizer("answer")["input_ids"]]
    assert "".join(deltas) == "answer"


def test_the_decoder_is_transformers_decode_without_special_tokens(tokenizer) -> None:
    ids = [tokenizer.bos_token_id, *tokenizer(TEXT)["input_ids"], tokenizer.eos_token_id]
    assert text_decoder(tokenizer)(ids) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT


def test_a_tokenizer_that_cleans_up_spaces_is_decoded_by_transformers() -> None:
    """WordPiece decodes "hello , world ." and transformers' clean-up joins the punctuation; the Rust
    decoder alone would not."""
    vocabulary = {"[UNK]": 0, "hello": 1, ",": 2, "world": 3, ".": 4}
    wordpiece = Tokenizer(models.WordPiece(vocabulary, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece(cleanup=False)  # the clean-up is left to transformers
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", clean_up_tokenization_spaces=True
    )
    assert text_decoder(tokenizer)([1, 2, 3, 4]) == tokenizer.decode([1, 2, 3, 4]) == "hello, world."


def test_stop_string_split_across_deltas_is_cut() -> None:
    matcher = StopStringMatcher(["STOP"])
    released = [matcher.feed(delta, final=False) for delta in ("abc S", "TO", "P tail")]
    assert "".join(text for text, _ in released) == "abc "
    assert [stopped for _, stopped in released] == [False, False, True]


def test_text_that_might_start_a_stop_string_is_held_back() -> None:
    matcher = StopStringMatcher(["STOP"])
    text, stopped = matcher.feed("abcST", final=False)
    assert (text, stopped) == ("ab", False)


def test_held_back_text_is_released_at_the_end() -> None:
    matcher = StopStringMatcher(["STOP"])
    first, _ = matcher.feed("abcST", final=False)
    rest, stopped = matcher.feed("", final=True)
    assert (first + rest, stopped) == ("abcST", False)


def test_earliest_of_several_stop_strings_wins() -> None:
    matcher = StopStringMatcher(["later", "soon"])
    text, stopped = matcher.feed("x soon y later", final=False)
    assert (text, stopped) == ("x ", True)
