"""LoRA adapters served on one base model, many at once, batched in the same engine steps.

Reading an adapter (`inference.lora.adapter`) imports peft, which takes seconds: only servers that
load adapters import it.
"""

from inference.lora.layer import LoraLinear, LoraSegment, LoraStep, lora_step, one_adapter
from inference.lora.registry import BASE_LORA_ID, LoraRegistry
from inference.lora.weights import LoraAdapter, LoraAdapterError, LoraWeights, UnsupportedLoraError

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
]
