"""How close a run comes to the machine: model FLOPs done per second against the matmul FLOP/s
that the same weight shapes reach on this device, measured in the same process.

A token costs two FLOPs per weight of every linear layer it passes (the LM head included);
attention scores are left out, so the figure slightly understates the work done.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

# Timed repetitions of each shape; the first call of each is a warm-up.
_REPEATS = 5


def linear_shapes(model: nn.Module) -> Counter[tuple[int, int]]:
    """(out_features, in_features) of every linear layer the forward pass runs, with multiplicity."""
    shapes: Counter[tuple[int, int]] = Counter()
    for module in model.modules():
        # nn.Linear and the modules swapped in for it (int8, sharded) all carry these two attributes.
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            shapes[(module.out_features, module.in_features)] += 1
    return shapes


def flops_per_token(model: nn.Module) -> int:
    return sum(2 * rows * columns * count for (rows, columns), count in linear_shapes(model).items())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(model: nn.Module, tokens: int, device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of `tokens`-row matmuls on each linear shape of `model`, weighted as the model runs them."""
    shapes = linear_shapes(model)
    total_flops, total_seconds = 0, 0.0
    for (out_features, in_features), count in shapes.items():
        inputs = torch.randn(tokens, in_features, device=device, dtype=dtype)
        weight = torch.randn(out_features, in_features, device=device, dtype=dtype)
        F.linear(inputs, weight)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(_REPEATS):
            F.linear(inputs, weight)
        _synchronize(device)
        total_seconds += (time.perf_counter() - start) / _REPEATS * count
        total_flops += 2 * tokens * out_features * in_features * count
    return total_flops / total_seconds
