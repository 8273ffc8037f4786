"""The engine's state for one request: its tokens, how many have KV entries, and its KV blocks."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Any

from inference.engine.grammar import GrammarCompiler, GrammarState
from inference.engine.request import FinishReason, GenerationRequest, SamplingParams

_SEED_BITS = 63


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    arrival_time: float
    # Sampling noise is a function of (seed, output position); unseeded requests get a random seed.
    seed: int = 0
    grammar: GrammarState | None = None
    # Seeds the chain of block hashes: sequences with different salts never share cached KV blocks.
    cache_salt: str | None = None
    token_ids: list[int] = field(default_factory=list)
    # Tokens whose keys and values are in the KV cache; reset to 0 when preempted (recompute).
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    # Prefix caching: the chained hashes of the full blocks hashed so far (tokens only grow, so they
    # stay valid), how many leading blocks of `block_table` are in the cache's index, and how many
    # prompt tokens were found cached when the sequence was first admitted (None until then).
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_blocks: int = 0
    num_cached_tokens: int | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    # Whatever the owner of the request hands tokens to (the async layer's stream); opaque here.
    sink: Any = None
    lora_name: str | None = None  # None: the base model
    lora_id: int = 0  # the adapter's id in the model's LoRA registry, set on admission; 0: the base model
    # Read for every token of every step: an attribute, not a property over the prompt.
    num_prompt_tokens: int = field(init=False)
    # Set when the engine takes the request (`EngineCore.add`): the tokens that end it (its stop
    # tokens, and end-of-sequence unless it ignores them), and the length at which it ends.
    end_token_ids: frozenset[int] = frozenset()
    max_length: int = 0

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)

    @classmethod
    def from_request(
        cls, request: GenerationRequest, arrival_time: float, grammars: GrammarCompiler | None = None
    ) -> Sequence:
        sampling = request.sampling
        seed = secrets.randbits(_SEED_BITS) if sampling.seed is None else sampling.seed
        grammar = None
        if sampling.grammar is not None and grammars is not None:
            grammar = GrammarState(grammars, sampling.grammar)
        prompt = list(request.prompt_token_ids)
        return cls(
            request.request_id, prompt, sampling, arrival_time, seed, grammar, request.cache_salt,
            lora_name=request.lora_name,
        )  # fmt: skip

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def remaining_tokens(self) -> int:
        return self.sampling.max_tokens - self.num_output_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
