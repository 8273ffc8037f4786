"""LoRA adapters served on one base model, many at once, batched in the same engine steps."""

from inference.lora.adapter import (
    LoraAdapter,
    LoraAdapterError,
    LoraWeights,
    UnsupportedLoraError,
    read_lora_adapter,
)
from inference.lora.layer import LoraLinear, LoraSegment, LoraStep, lora_step, one_adapter
from inference.lora.registry import BASE_LORA_ID, LoraRegistry

__all__ = [
    "BASE_LORA_ID",
    "LoraAdapter",
    "LoraAdapterError",
    "LoraLinear",
    "LoraRegistry",
    "LoraSegment",
    "LoraStep",
    "LoraWeights",
    "UnsupportedLoraError",
    "lora_step",
    "one_adapter",
    "read_lora_adapter",
]
