"""What the API layer hands the engine and what it gets back: the engine's public vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]

# Below this a temperature is greedy, as in vLLM: dividing logits by it would overflow float32 and
# turn every probability into NaN.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # below GREEDY_TEMPERATURE means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False  # return the chosen token's log-probability
    ignore_eos: bool = False  # generate max_tokens whatever the model says (benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate.

    `cache_salt` keys the prefix cache beyond the tokens: requests share cached KV blocks only when
    their salts are equal. Anything that changes the KV of the same tokens belongs in it (the LoRA
    adapter serving the request); None, the default, is the base model's plain cache.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cache_salt: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. The last event of a request has `finish_reason` set; the first has
    `cached_prompt_tokens`, how many prompt tokens the prefix cache spared computing."""

    token_id: int
    logprob: float | None = None
    finish_reason: FinishReason | None = None
    cached_prompt_tokens: int | None = None


class EngineError(Exception):
    """Base of the errors the engine raises to the API layer."""


class QueueFullError(EngineError):
    """The waiting queue is at its configured bound; the caller should retry later (429)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"the waiting queue is full; retry in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


class EngineNotReadyError(EngineError):
    """The engine is loading, draining or stopped and admits no new request (503)."""


class InvalidRequestError(EngineError):
    """The request cannot run as given: no prompt, nothing to generate, ids outside the vocabulary (400)."""


class PromptTooLongError(EngineError):
    """The prompt plus max_tokens does not fit the model's context (400)."""


class RequestFailedError(EngineError):
    """Computing this request's step raised; the request ended, the engine and other requests go on (500)."""
