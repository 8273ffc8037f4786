"""Token ids to text as they arrive: incremental detokenization and stop strings.

Both keep a little text back while it is still ambiguous (a partial UTF-8 character, the start of
a stop string), so a streamed response never shows text that the complete response would not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

# Prompt tokens decoded ahead of the output, so tokenizers that drop a leading space when decoding
# a sequence on its own (SentencePiece) still produce the space of the first generated word.
_CONTEXT_TOKENS = 4
_REPLACEMENT_CHARACTER = "\ufffd"


def text_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[Sequence[int]], str]:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, straight from the Rust tokenizer where that is
    all transformers would do: its Python wrapper costs several times the decode, and runs twice for
    every streamed token. With `clean_up_tokenization_spaces` (which transformers applies, or not, by
    tokenizer model) or a slow tokenizer, it is transformers' own decode."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.clean_up_tokenization_spaces:
        return functools.partial(tokenizer.decode, skip_special_tokens=True)
    return functools.partial(backend.decode, skip_special_tokens=True)


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: Sequence[int]) -> None:
        self._decode = text_decoder(tokenizer)
        self._ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        # ids[prefix:read] is text already returned, kept to decode the next tokens in context.
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes, possibly empty while a character is still partial."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of generation."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        known = self._decode(self._ids[self._prefix : self._read])
        extended = self._decode(self._ids[self._prefix :])
        if len(extended) <= len(known) or (extended.endswith(_REPLACEMENT_CHARACTER) and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return extended[len(known) :]


class StopStringMatcher:
    """Cuts the output at the first stop string; the returned text never includes it."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(stop)
        # A stop string can straddle deltas: this much trailing text may be the start of one.
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._released = 0

    def feed(self, delta: str, *, final: bool) -> tuple[str, bool]:
        """Text now safe to release, and whether a stop string ended the output."""
        search_from = max(0, len(self.text) - self._holdback)
        self.text += delta
        hits = [index for s in self._stop if (index := self.text.find(s, search_from)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._release(len(self.text)), True
        safe_end = len(self.text) if final else len(self.text) - self._holdback
        return self._release(max(safe_end, self._released)), False

    def _release(self, end: int) -> str:
        released = self.text[self._released : end]
        self._released = end
        return released
