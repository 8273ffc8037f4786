"""Quantization as module swapping: every `nn.Linear` of the decoder becomes an int8 module.

The output projection (lm_head) and the embeddings stay in the model's dtype: they set the logits
directly, and keeping them exact keeps greedy answers closest to the original model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn
from transformers.pytorch_utils import Conv1D

from inference.quantize.int8_linear import Int8Linear, empty_like_linear, from_linear
from inference.quantize.schemes import QuantizationError, Scheme


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the layers int8 replaces; a model with nothing it can quantize is refused."""
    unsupported = sorted({type(module).__name__ for module in model.modules() if isinstance(module, Conv1D)})
    if unsupported:
        raise QuantizationError(
            f"{type(model).__name__} uses {', '.join(unsupported)} layers (GPT-2 style transposed linears), "
            "which int8 quantization does not support; only torch.nn.Linear layers are quantized"
        )
    output_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # Exact type: subclasses such as MultiheadAttention's out_proj are read as raw weights by their parent.
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not output_layer
    ]
    if not names:
        raise QuantizationError(f"{type(model).__name__} has no torch.nn.Linear layer to quantize")
    return names


def quantize_model(model: nn.Module, scheme: Scheme) -> list[str]:
    """Quantize in place from the model's own weights; returns the names of the swapped layers."""
    names = quantizable_linears(model)
    _swap(model, names, lambda linear: from_linear(scheme, linear))
    return names


def swap_in_placeholders(model: nn.Module, scheme: Scheme, names: Iterable[str]) -> None:
    """Shape the model for a quantized state dict: the named layers become empty int8 modules."""
    _swap(model, names, lambda linear: empty_like_linear(scheme, linear))


def int8_modules(model: nn.Module) -> dict[str, Int8Linear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, Int8Linear)}


def _swap(model: nn.Module, names: Iterable[str], replacement: Callable[[nn.Linear], Int8Linear]) -> None:
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, child_name)
        except AttributeError as error:
            raise QuantizationError(f"the model has no layer {name!r} to quantize") from error
        if type(linear) is not nn.Linear:
            raise QuantizationError(f"layer {name!r} is a {type(linear).__name__}, not a torch.nn.Linear")
        setattr(parent, child_name, replacement(linear))
