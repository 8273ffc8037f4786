"""Constrained decoding on llguidance: grammars compiled once and cached, token masks for the batch.

A request's grammar (a JSON schema, a regex, a choice of strings, a Lark grammar) is compiled when
the request arrives, so that a bad one is a 400 and not a failure mid-generation; compiled grammars
are cached by their text. Each sequence gets its own matcher, a copy of the compiled one. Every
step the sampler checks each constrained sequence's token, and asks for the allowed tokens of those
it rejects at once, as one bitmask.

A grammar alone does not make a model stop: a random model can open strings and arrays forever.
So when a sequence's token budget gets close to the shortest way to finish what it has opened, the
output follows that way (closing quotes and brackets, then end of sequence), and is complete and valid
rather than cut off. Near the end of the budget a token that would open more than the rest of the budget
can close (a second tool call, say) is not taken: the output closes instead. Only if even the way to the
end does not fit does it end with `length`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import llguidance
import llguidance.hf
import llguidance.torch
import torch
from transformers import PreTrainedTokenizerBase

from inference.engine.request import InvalidGrammarError

logger = logging.getLogger(__name__)

GrammarKind = Literal["json_schema", "regex", "choice", "lark"]

# A backslash and the character it escapes (an escaped backslash is one pair, so `\\d` is no class).
_CLASS_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ASCII_CLASSES = {"d": "[[:digit:]]", "D": "[[:^digit:]]", "w": "[[:word:]]", "W": "[[:^word:]]"}
# Compact JSON: a model (especially a random one) is not invited to pad its output with whitespace.
_JSON_OPTIONS = {"whitespace_flexible": False}
_CACHE_SIZE = 256
# Text that closes what JSON (and most grammars) leave open, most preferred first: inside a string a
# bracket is just text, at the start of an object a quote opens a key, so both orders are tried.
_CLOSER_ORDERS = (('"', "}", "]", "0", ","), ("}", "]", '"', "0", ","))
# Tokens that open something new are never taken on the way to the end.
_OPENERS = frozenset(("{", "[", '"'))
# Closing starts this many tokens before the budget strictly needs it, room for a way that the cheap
# check of a token underestimated (see GrammarState) to be walked again and still fit.
_CLOSING_MARGIN = 4
# Within this many tokens of the way to the end, the way is kept up to date every step and every token
# is checked to leave one that fits the budget (one token can open a long mandatory structure: a
# second `<tool_call>` and its JSON). Before, it is walked every _RECHECK_EVERY steps.
_END_WINDOW = 128
_RECHECK_EVERY = 8
# A token off the known way often rejoins it within a step or two (the bytes of one character).
_REJOIN_STEPS = 3


def _byte_level_alphabet() -> dict[str, int]:
    """How byte-level BPE vocabularies (GPT-2's and its descendants') spell each byte as a character:
    printable Latin-1 bytes as themselves, the others as the characters from U+0100 on, in order."""
    ranges = (("!", "~"), ("¡", "¬"), ("®", "ÿ"))
    printable = [byte for first, last in ranges for byte in range(ord(first), ord(last) + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    spelled = {chr(byte): byte for byte in printable}
    spelled.update({chr(256 + index): byte for index, byte in enumerate(others)})
    return spelled


_BYTE_LEVEL_BYTES = _byte_level_alphabet()
_ALLOWED = 200  # llguidance's logit bias of an allowed token


@dataclass(frozen=True)
class GrammarSpec:
    """What a request asks its output to match; `source` is the schema (JSON text), regex, or grammar."""

    kind: GrammarKind
    source: str

    @classmethod
    def json_schema(cls, schema: object) -> GrammarSpec:
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def choice(cls, options: Sequence[str]) -> GrammarSpec:
        return cls("choice", json.dumps(list(options)))


@dataclass(frozen=True)
class CompiledGrammar:
    spec: GrammarSpec
    matcher: llguidance.LLMatcher  # in its start state; never advanced, only copied
    compile_seconds: float


def grammar_compiler(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: Iterable[int]
) -> GrammarCompiler | None:
    """The compiler for a model's tokenizer, or None (logged) if llguidance cannot read the tokenizer."""
    try:
        return GrammarCompiler(tokenizer, vocab_size, eos_token_ids)
    except (ValueError, TypeError) as error:
        logger.warning("structured outputs are unavailable for this tokenizer: %s", error)
        return None


def compile_grammar(compiler: GrammarCompiler | None, spec: GrammarSpec) -> CompiledGrammar:
    """`spec` compiled (or found in the cache); InvalidGrammarError if it does not compile or the
    tokenizer has no compiler."""
    if compiler is None:
        raise InvalidGrammarError("structured outputs are unavailable: the tokenizer is not supported")
    return compiler.compile(spec)


def token_bytes(compiler: GrammarCompiler | None, tokenizer: PreTrainedTokenizerBase, token_id: int) -> bytes:
    """The bytes a token stands for on its own (part of a character, for some)."""
    if compiler is None:
        return tokenizer.decode([token_id]).encode()
    return compiler.token_bytes(token_id)


def ascii_class_escapes(regex: str) -> str:
    """`regex` with `\\d`, `\\w` and their negations meaning ASCII digits and word characters, as in
    JavaScript's regexes, which vLLM's default grammar backend and JSON Schema's `pattern` follow.
    llguidance's regexes give them Unicode's meaning (any script's digits); its JSON schemas already
    do not. The classes are written in its syntax, which takes a class inside a class too."""
    return _CLASS_ESCAPE.sub(lambda escape: _ASCII_CLASSES.get(escape[1], escape[0]), regex)


def grammar_text(spec: GrammarSpec) -> str:
    """The llguidance grammar of `spec` (its own JSON form), not yet checked."""
    if spec.kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(spec.source, defaults=_JSON_OPTIONS)
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(ascii_class_escapes(spec.source))
    if spec.kind == "choice":
        options = json.loads(spec.source)
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in options))
    if "::=" in spec.source:  # GBNF, as llama.cpp and vLLM's examples write grammars
        return llguidance.LLMatcher.grammar_from_lark(llguidance.gbnf_to_lark(spec.source))
    return llguidance.LLMatcher.grammar_from_lark(spec.source)


class GrammarCompiler:
    """Compiles grammars for one tokenizer, keeping the most recent ones."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: Iterable[int]
    ) -> None:
        # Models often pad their vocabulary past the tokenizer's; a mask covers whichever is larger.
        self.vocab_size = max(vocab_size, len(tokenizer))
        self._hf_tokenizer = tokenizer
        self._special_ids = frozenset(tokenizer.all_special_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=self.vocab_size, eos_token=sorted(eos_token_ids) or None
        )
        self.eos_token_ids = frozenset(self.tokenizer.eos_tokens)
        self._closer_orders = [
            [ids[0] for text in order if len(ids := self.tokenizer.tokenize_str(text)) == 1]
            for order in _CLOSER_ORDERS
        ]
        self._openers = frozenset(
            ids[0] for text in _OPENERS if len(ids := self.tokenizer.tokenize_str(text)) == 1
        )
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.executor = llguidance.LLExecutor()

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one compiler per engine, for the process's life
    def token_bytes(self, token_id: int) -> bytes:
        own = self.tokenizer.decode_bytes([token_id])
        if own or token_id in self._special_ids:
            return own
        # llguidance marks special tokens with a 0xFF byte, so a token holding that byte comes back empty.
        symbols = self._hf_tokenizer.convert_ids_to_tokens(token_id) or ""
        return bytes(_BYTE_LEVEL_BYTES[symbol] for symbol in symbols if symbol in _BYTE_LEVEL_BYTES)

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        with self._lock:
            if (cached := self._cache.get(spec)) is not None:
                self._cache.move_to_end(spec)
                return cached
        started = time.perf_counter()
        try:
            text = grammar_text(spec)
        except (ValueError, TypeError, json.JSONDecodeError) as error:
            raise InvalidGrammarError(f"the {spec.kind} does not compile: {error}") from error
        problem = llguidance.LLMatcher.validate_grammar(text, self.tokenizer)
        if problem:
            raise InvalidGrammarError(f"the {spec.kind} does not compile: {problem.strip()}")
        matcher = llguidance.LLMatcher(self.tokenizer, text, log_level=0)
        if matcher.is_error():
            raise InvalidGrammarError(f"the {spec.kind} does not compile: {matcher.get_error()}")
        compiled = CompiledGrammar(spec, matcher, time.perf_counter() - started)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def closing_path(self, matcher: llguidance.LLMatcher, limit: int) -> list[int] | None:
        """The tokens that take `matcher` to the end soonest, as far as two greedy walks tell (one that
        prefers closing strings, one that prefers closing brackets), or None if both take more than
        `limit` tokens. An end is a stopped grammar, or an accepting one plus end of sequence."""
        best: list[int] | None = None
        for closers in self._closer_orders:
            # A walk only matters if it beats the best so far, so it stops once it cannot.
            path = self._walk(matcher, limit if best is None else len(best) - 1, closers)
            best = path if path is not None else best
        return best

    def way_through(self, matcher: llguidance.LLMatcher, tokens: list[int]) -> list[int] | None:
        """`tokens` (ending with a way to the end from elsewhere), if it is one from `matcher` as far as
        one validation tells: exactly for a way that ends with end of sequence (taken only where the
        grammar accepts); for one that ends by completing the grammar, by its last token not being taken
        once more (a complete grammar takes nothing; a string opened before the way's closing brackets
        takes them again). `confirmed_way` makes sure."""
        if tokens[-1] in self.eos_token_ids:
            return tokens if matcher.validate_tokens(tokens) == len(tokens) else None
        return tokens if matcher.validate_tokens([*tokens, tokens[-1]]) == len(tokens) else None

    def confirmed_way(self, matcher: llguidance.LLMatcher, way: list[int]) -> list[int] | None:
        """`way` if it takes `matcher` to the end (plus the end of sequence, or less it, as the grammar
        then needs), else None."""
        body = way[:-1] if way and way[-1] in self.eos_token_ids else way
        walker = matcher.deep_copy()
        if not walker.consume_tokens(body):
            return None
        if walker.is_stopped():
            return body
        return [*body, min(self.eos_token_ids)] if walker.is_accepting() else None

    def way_after(
        self, matcher: llguidance.LLMatcher, token_id: int, way: list[int], limit: int
    ) -> list[int] | None:
        """A way to the end after `token_id` (an allowed token) of at most `limit` tokens, given `way`,
        one from `matcher`; or None. Usually `way` rejoined within a few steps (`token_id` takes the
        place of its first token, as another character of a string does, or comes before it), else a
        new walk."""
        if way and token_id == way[0]:
            return way[1:] if len(way) - 1 <= limit else None
        if (rejoined := self._rejoined(matcher, [token_id], way)) is not None:
            return rejoined[1:] if len(rejoined) - 1 <= limit else None
        after = matcher.deep_copy()
        if not after.consume_token(token_id):
            return None
        walker, detour = after.deep_copy(), []
        for _ in range(_REJOIN_STEPS):
            step = walker.compute_ff_tokens() or self._next_closer(walker, self._closer_orders[0])
            if not step or not walker.consume_tokens(step):
                break
            detour.extend(step)
            if (rejoined := self._rejoined(walker, [], way)) is not None:
                return [*detour, *rejoined] if len(detour) + len(rejoined) <= limit else None
        return self.closing_path(after, limit)

    def _rejoined(self, matcher: llguidance.LLMatcher, prefix: list[int], way: list[int]) -> list[int] | None:
        """`prefix` and then `way` less its first token (which the prefix stands in for) or whole, if
        that is a way to the end from `matcher`; without any of the way's tokens, the end is confirmed."""
        for tail in (way[1:], way):
            tokens = [*prefix, *tail]
            through = self.way_through(matcher, tokens) if tail else self.confirmed_way(matcher, tokens)
            if through is not None:
                return through
        return None

    def _walk(self, matcher: llguidance.LLMatcher, limit: int, closers: Sequence[int]) -> list[int] | None:
        walker = matcher.deep_copy()
        path: list[int] = []
        while len(path) <= limit:
            if walker.is_stopped():
                return path
            if walker.is_accepting():
                return [*path, min(self.eos_token_ids)] if len(path) < limit else None
            step = walker.compute_ff_tokens() or self._next_closer(walker, closers)
            if not step or not walker.consume_tokens(step):
                return None
            path.extend(step)
        return None

    def _next_closer(self, walker: llguidance.LLMatcher, closers: Sequence[int]) -> list[int]:
        for token in closers:
            if walker.validate_tokens([token]) == 1:
                return [token]
        allowed = walker.compute_logit_bias()  # a byte per token: nonzero where allowed
        token = allowed.find(_ALLOWED)
        while token in self._openers or token in self.eos_token_ids:
            token = allowed.find(_ALLOWED, token + 1)
        return [token] if token >= 0 else []


class GrammarState:
    """One sequence's progress through its grammar, and a way to its end (when known).

    Near the end of the budget the way is kept up to date from one step to the next: the token taken
    is the way's first, takes its place (another character of a string) or comes before it, which a
    cheap check tells; only a token that changes the structure costs a new walk. The check can be
    fooled, so the way is confirmed when closing starts, a few tokens early.
    """

    def __init__(self, compiler: GrammarCompiler, compiled: CompiledGrammar) -> None:
        self.compiler = compiler
        self.matcher = compiled.matcher.deep_copy()
        self._way: list[int] | None = None  # a way to the end from here, if known
        self._way_length = 0  # its length when last known
        self._closing = False  # the output follows the way to the end
        self._steps_unknown = _RECHECK_EVERY
        self._checked: tuple[int, list[int]] | None = None  # a token checked this step, the way after it

    def forced_token(self, remaining: int) -> int | None:
        """The token to take now so that the output can still end within `remaining` tokens, if the
        budget is that tight. Call once per step, before `keep_within_budget`."""
        way = self._known_way(remaining)
        if not way or (not self._closing and len(way) + _CLOSING_MARGIN < remaining):
            return None
        return self._close(remaining)

    def _close(self, remaining: int) -> int | None:
        """Start following the way to the end (confirmed first: a way carried from step to step was
        only checked cheaply), and return its first token; None if no way fits."""
        if not self._closing:
            way = self.compiler.confirmed_way(self.matcher, self._way or [])
            if way is None or len(way) > remaining:
                way = self.compiler.closing_path(self.matcher, remaining)
            self._way, self._closing = way, bool(way)
        return self._way[0] if self._way else None

    def _known_way(self, remaining: int) -> list[int] | None:
        if self._way is None:
            self._steps_unknown += 1
            if remaining <= self._way_length + _END_WINDOW or self._steps_unknown >= _RECHECK_EVERY:
                self._steps_unknown = 0
                self._way = self.compiler.closing_path(self.matcher, remaining)
                self._way_length = self._way_length if self._way is None else len(self._way)
        return self._way

    def allows(self, token_id: int) -> bool:
        return self.matcher.validate_tokens([token_id]) == 1

    def keep_within_budget(self, token_id: int, remaining: int) -> int:
        """`token_id` (an allowed token), unless after it the output could no longer end within the
        `remaining` tokens (this one included): then the way's first token, and the output follows
        the way from then on. Checked near the end of the budget, where such a token matters."""
        way = self._way
        if self._closing or not way or remaining > len(way) + _END_WINDOW:
            return token_id
        after = self.compiler.way_after(self.matcher, token_id, way, remaining - 1)
        if after is not None:
            self._checked = (token_id, after)
            return token_id
        closing = self._close(remaining)
        return token_id if closing is None else closing

    def accept(self, token_id: int) -> bool:
        """Advance past `token_id`; True when the grammar is complete (or broken) and the output ends."""
        if self._checked is not None and self._checked[0] == token_id:
            self._way = self._checked[1]
        elif self._way and self._way[0] == token_id:
            self._way = self._way[1:]
        else:
            self._way, self._closing = None, False
        self._checked = None
        if self._way is not None:
            self._way_length = len(self._way)
        self.matcher.consume_token(token_id)
        return self.matcher.is_stopped()


def fill_bitmask(compiler: GrammarCompiler, matchers: Sequence[llguidance.LLMatcher]) -> torch.Tensor:
    """The tokens each matcher allows next, as a bitmask `[len(matchers), ceil(vocab/32)]` (int32, on
    the host)."""
    bitmask = llguidance.torch.allocate_token_bitmask(len(matchers), compiler.vocab_size)
    rows = [(matcher, row) for row, matcher in enumerate(matchers)]
    llguidance.torch.fill_next_token_bitmask_par(compiler.executor, rows, bitmask)
    return bitmask


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A packed int32 bitmask `[rows, words]` as booleans `[rows, vocab_size]`."""
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    return ((bitmask[:, :, None] >> bits) & 1).flatten(1)[:, :vocab_size].bool()
