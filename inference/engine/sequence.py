"""The engine's state for one request: its tokens, how many have KV entries, and its KV blocks."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.engine.request import FinishReason, GenerationRequest, SamplingParams


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
    generator: torch.Generator | None = None
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

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @classmethod
    def from_request(cls, request: GenerationRequest, arrival_time: float, device: torch.device) -> Sequence:
        generator = None
        if not request.sampling.greedy:
            generator = torch.Generator(device=device)
            if request.sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(request.sampling.seed)
        return cls(
            request.request_id,
            list(request.prompt_token_ids),
            request.sampling,
            arrival_time,
            generator,
            request.cache_salt,
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
