"""Bytes the weights of a model take, counted from the tensors it really holds."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from inference.quantize.int8_linear import Int8Linear


def layer_bytes(layer: nn.Module) -> int:
    """An int8 layer's defining tensors, or a float layer's own parameters and buffers."""
    if isinstance(layer, Int8Linear):
        return layer.storage_bytes()
    tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
    return sum(tensor.nbytes for tensor in tensors)


def layers_bytes(model: nn.Module, names: Iterable[str]) -> int:
    return sum(layer_bytes(model.get_submodule(name)) for name in names)


def model_weight_bytes(model: nn.Module) -> int:
    """Every weight of the model once: tied tensors count once, int8 layers by their int8 state."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.storage_bytes()
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.nbytes
    return total
