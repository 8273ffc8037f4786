"""Batched LoRA as module swapping: a targeted linear layer becomes a `LoraLinear` around it.

The wrapped layer can be anything with `in_features`/`out_features` that maps `[..., in]` to
`[..., out]` (a `torch.nn.Linear`, an int8 layer), so quantization and LoRA compose. The engine
packs each step's tokens grouped by adapter, so every adapter's rows form one contiguous range; a
layer then adds `(x @ A.T) @ B.T` once per adapter present in the step, whatever the number of
requests for it, and rows for the base model cost nothing extra. Like the paged attention, the
step's layout reaches the layers through a context variable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from inference.lora.weights import LoraWeights


@dataclass(frozen=True)
class LoraSegment:
    lora_id: int
    rows: slice  # of the step's flattened tokens


@dataclass(frozen=True)
class LoraStep:
    segments: tuple[LoraSegment, ...]
    num_rows: int | None  # tokens in the step; None: the segments cover every row, however many


_current_step: ContextVar[LoraStep | None] = ContextVar("llm_serving_lora_step", default=None)


@contextlib.contextmanager
def lora_step(step: LoraStep | None) -> Iterator[None]:
    token = _current_step.set(step)
    try:
        yield
    finally:
        _current_step.reset(token)


def one_adapter(lora_id: int) -> contextlib.AbstractContextManager[None]:
    """Run the model with one adapter on every token, outside the engine (e.g. `generate`)."""
    return lora_step(LoraStep((LoraSegment(lora_id, slice(None)),), None))


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        # (A.T, B.T) per adapter id, transposed once here rather than in every step.
        self.adapters: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, lora_id: int, weights: LoraWeights) -> None:
        self.adapters[lora_id] = (weights.a.t().contiguous(), weights.b.t().contiguous())

    def remove(self, lora_id: int) -> None:
        self.adapters.pop(lora_id, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        step = _current_step.get()
        if step is None or not self.adapters:
            return out
        out = out.contiguous()  # adapters add into it in place, through a flat view
        rows_in = x.reshape(-1, self.in_features)
        rows_out = out.view(-1, self.out_features)
        if step.num_rows is not None and rows_in.shape[0] != step.num_rows:
            raise RuntimeError(
                f"a LoRA layer saw {rows_in.shape[0]} rows in a step of {step.num_rows} tokens; "
                "LoRA applies only to layers that see every token of the step"
            )
        for segment in step.segments:
            pair = self.adapters.get(segment.lora_id)
            if pair is not None:
                a_t, b_t = pair
                target = rows_out[segment.rows]
                target.addmm_(rows_in[segment.rows] @ a_t, b_t)
        return out

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.adapters)}"
