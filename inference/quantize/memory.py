"""Bytes the weights of a model take, counted from the tensors it really holds."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from inference.engine.packed_linear import PackedLinear
from inference.quantize.int8_linear import Int8Linear


def _weight_tensors(module: nn.Module) -> list[torch.Tensor]:
    """An int8 layer's defining tensors, a packed layer's weight and bias, or any other module's own
    parameters and buffers."""
    if isinstance(module, Int8Linear):
        return list(module.int8_state().values())
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return [module.packed_weight, *own] if isinstance(module, PackedLinear) else own


def _identity(tensor: torch.Tensor) -> int:
    """Where a tensor's bytes are, so that tied ones count once; an opaque packed weight is its own."""
    return id(tensor) if tensor.is_mkldnn else tensor.data_ptr()


def layer_bytes(layer: nn.Module) -> int:
    return sum(tensor.nbytes for tensor in _weight_tensors(layer))


def layers_bytes(model: nn.Module, names: Iterable[str]) -> int:
    return sum(layer_bytes(model.get_submodule(name)) for name in names)


def model_weight_bytes(model: nn.Module) -> int:
    """Every weight of the model once: tied tensors count once, int8 layers by their int8 state."""
    unique = {_identity(tensor): tensor for module in model.modules() for tensor in _weight_tensors(module)}
    return sum(tensor.nbytes for tensor in unique.values())
