"""What the API layer hands the engine and what it gets back: the engine's public vocabulary."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from inference.engine.grammar import CompiledGrammar

FinishReason = Literal["stop", "length", "abort"]

# Below this temperature the softmax is a one-hot in float32 anyway: decode greedily instead of
# dividing by a number that turns the logits into infinities.
GREEDY_TEMPERATURE = 1e-5
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # at most GREEDY_TEMPERATURE means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    seed: int | None = None
    # OpenAI's: subtracted once per token already in the output (presence) and per occurrence (frequency).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # transformers' and vLLM's: logits of tokens in the prompt or output divided (positive) or multiplied
    # (negative) by it.
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    # End-of-sequence and stop tokens cannot be sampled before this many output tokens.
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False  # return the chosen token's log-probability
    top_logprobs: int = 0  # and this many of the most likely tokens' (at most MAX_TOP_LOGPROBS)
    ignore_eos: bool = False  # generate max_tokens whatever the model says (benchmarks)
    grammar: CompiledGrammar | None = None  # constrain the output (structured outputs, forced tool calls)

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def end_token_ids(self, eos_token_ids: frozenset[int]) -> frozenset[int]:
        """The tokens that end the output: the stop tokens, and end-of-sequence unless it is ignored."""
        return self.stop_token_ids | (frozenset() if self.ignore_eos else eos_token_ids)

    @functools.cached_property
    def plain_greedy(self) -> bool:
        """Whether the token is the argmax of the model's own logits, with no log-probabilities to
        report: nothing in the sampler but the argmax applies (most of a benchmark's rows, say)."""
        return (
            self.greedy
            and not (self.penalized or self.logit_bias or self.min_tokens or self.logprobs)
            and self.grammar is None
        )


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate.

    `cache_salt` keys the prefix cache beyond the tokens: requests share cached KV blocks only when
    their salts are equal. Anything that changes the KV of the same tokens belongs in it (the LoRA
    adapter serving the request, and so something new whenever an adapter's weights are replaced under
    the same name); None, the default, is the base model's plain cache.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cache_salt: str | None = None
    lora_name: str | None = None  # the LoRA adapter to generate with; None: the base model


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's log-probability under the model, and the most likely tokens' (id, logprob)."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class TokenEvent(NamedTuple):
    """One generated token. The last event of a request has `finish_reason` set; the first has
    `cached_prompt_tokens`, how many prompt tokens the prefix cache spared computing. (A named tuple:
    one is made per token, several times faster than a frozen dataclass.)"""

    token_id: int
    logprobs: TokenLogprobs | None = None
    finish_reason: FinishReason | None = None
    cached_prompt_tokens: int | None = None

    @property
    def logprob(self) -> float | None:
        return None if self.logprobs is None else self.logprobs.logprob


class EngineError(Exception):
    """Base of the errors the engine raises to the API layer."""


class QueueFullError(EngineError):
    """The waiting queue is at its configured bound; the caller should retry later (429)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"the waiting queue is full; retry in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds

    def __reduce__(self) -> tuple[type[QueueFullError], tuple[int]]:
        # Sent from an engine process: rebuilt from the seconds, not from the message.
        return QueueFullError, (self.retry_after_seconds,)


class EngineNotReadyError(EngineError):
    """The engine is loading, draining or stopped and admits no new request (503)."""


class InvalidRequestError(EngineError):
    """The request cannot run as given: no prompt, nothing to generate, ids outside the vocabulary (400)."""


class UnknownModelError(EngineError):
    """The request names a LoRA adapter that is not loaded (404)."""


class LoraLoadError(EngineError):
    """A LoRA adapter cannot be loaded: unreadable, unsupported, not for this model, or over a limit (400)."""


class PromptTooLongError(EngineError):
    """The prompt plus max_tokens does not fit the model's context (400)."""


class InvalidGrammarError(InvalidRequestError):
    """The schema, regex or grammar a request constrains its output with does not compile (400)."""


class RequestFailedError(EngineError):
    """Computing this request's step raised; the request ended, the engine and other requests go on (500)."""
