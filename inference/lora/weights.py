"""What a served LoRA adapter is once read: per targeted layer, its A and its scaled B."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


class LoraAdapterError(ValueError):
    """An adapter directory is missing, unreadable or does not fit the base model; the message says why."""


class UnsupportedLoraError(LoraAdapterError):
    """The adapter uses a peft option (DoRA, biases, ...) that the server does not compute exactly."""


@dataclass(frozen=True)
class LoraWeights:
    a: torch.Tensor  # [r, in_features]
    b: torch.Tensor  # [out_features, r], scaling folded in

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class LoraAdapter:
    name: str
    path: Path
    layers: dict[str, LoraWeights]  # by the base model's module name, e.g. model.layers.0.self_attn.q_proj

    @property
    def rank(self) -> int:
        return max(weights.rank for weights in self.layers.values())
