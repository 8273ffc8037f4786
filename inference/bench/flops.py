"""How close a run comes to the machine: model FLOPs done per second against the matmul FLOP/s
that the same weight shapes reach on this device, measured in the same process with the layers the
engine runs (bfloat16 weights packed for oneDNN on the CPU, see `packed_linear`).

A token costs two FLOPs per weight of every linear layer it passes; the LM head counts only for
the tokens whose logits are needed (one per output token), attention scores not at all, so the
figure slightly understates the work done. The matmul rate of each shape is the best of several
timings: on a shared machine the others are slowed by neighbours, not by the shape.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch import nn

from inference.engine.packed_linear import engine_linear

# Timed repetitions of each shape, the best kept; a first call warms up.
_REPEATS = 10


def linear_shapes(model: nn.Module) -> Counter[tuple[int, int]]:
    """(out_features, in_features) of every linear layer the forward pass runs, with multiplicity."""
    shapes: Counter[tuple[int, int]] = Counter()
    for module in model.modules():
        # nn.Linear and the modules swapped in for it (int8, sharded) all carry these two attributes.
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            shapes[(module.out_features, module.in_features)] += 1
    return shapes


def _head_shape(model: nn.Module) -> tuple[int, int] | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None else (head.out_features, head.in_features)


def flops_per_token(model: nn.Module) -> tuple[int, int]:
    """(FLOPs of a token through the layers, FLOPs of one row of the LM head)."""
    shapes = linear_shapes(model)
    head = _head_shape(model)
    if head is not None:
        shapes[head] -= 1
    body = sum(2 * rows * columns * count for (rows, columns), count in shapes.items())
    return body, 0 if head is None else 2 * head[0] * head[1]


def model_flops(model: nn.Module, prompt_tokens: int, output_tokens: int) -> int:
    """The linear-layer FLOPs of prefilling `prompt_tokens` and generating `output_tokens`."""
    body, head = flops_per_token(model)
    return body * (prompt_tokens + output_tokens) + head * output_tokens


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def matmul_flops_per_second(model: nn.Module, tokens: int, device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of `tokens`-row matmuls on each linear shape of `model`, weighted as the model runs them."""
    shapes = linear_shapes(model)
    total_flops, total_seconds = 0, 0.0
    for (out_features, in_features), count in shapes.items():
        inputs = torch.randn(tokens, in_features, device=device, dtype=dtype)
        linear = engine_linear(out_features, in_features, device, dtype)
        linear(inputs)
        best = float("inf")
        for _ in range(_REPEATS):
            _synchronize(device)
            start = time.perf_counter()
            linear(inputs)
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
        total_seconds += best * count
        total_flops += 2 * tokens * out_features * in_features * count
    return total_flops / total_seconds
