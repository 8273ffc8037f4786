"""Transformers' RMS norms and gated MLPs on the CPU's kernels, in place of their chains of tensor
operations (eight for a norm, and the SiLU and product of an MLP: each a pass over memory and a
dispatch, in every layer at every step).

Layers are recognised by what they compute, not by their class: a leaf module with a one-dimensional
weight and an epsilon (`variance_epsilon` or `eps`) may be an RMS norm, a module with `gate_proj`,
`up_proj`, `down_proj` and `act_fn` may be a SiLU-gated MLP. Each candidate runs a probe input
through its own forward and through the kernels (`cpu_decode.rms_norm`, transformers' Llama formula;
`cpu_decode.silu_and_mul`), and takes the kernels' forward only where the two agree within the
dtype's rounding. Other formulas (Gemma's `1 + weight` norm, GELU-gated MLPs, layer norms with a
mean and a bias) disagree and keep their own forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from inference.engine import cpu_decode

logger = logging.getLogger(__name__)

_PROBE_ROWS = 4
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _epsilon(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


class _FusedRmsNorm:
    """A norm's forward on the kernel; inputs of another dtype than its weight (which the kernel does
    not mix) go through the module's own forward."""

    def __init__(self, module: nn.Module, eps: float) -> None:
        self.module = module
        self.eps = eps
        self.original = module.forward

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.module.weight
        if hidden.dtype != weight.dtype:
            return self.original(hidden)
        return cpu_decode.rms_norm(hidden, weight, self.eps)


class _FusedGatedMlp:
    """`down_proj(silu(gate_proj(x)) * up_proj(x))` with the SiLU and product in one kernel (the
    projections stay the module's own, adapters and all)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        mlp = self.module
        return mlp.down_proj(cpu_decode.silu_and_mul(mlp.gate_proj(hidden), mlp.up_proj(hidden)))


@torch.inference_mode()
def _agrees(module: nn.Module, fused: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor) -> bool:
    """Whether the module, run on the probe alone, gives what the kernels give. A module that cannot
    run on it (a forward that wants more arguments, a norm over other shapes) is no candidate."""
    try:
        expected = module(probe)
        if not isinstance(expected, torch.Tensor):
            return False
        torch.testing.assert_close(fused(probe), expected)
    except Exception:
        return False
    return True


def _probe(width: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return (torch.randn(_PROBE_ROWS, width, generator=generator) * 3).to(dtype)


def _fused_norm(module: nn.Module, generator: torch.Generator) -> _FusedRmsNorm | None:
    weight, eps = getattr(module, "weight", None), _epsilon(module)
    if eps is None or not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    if weight.dtype not in _DTYPES or next(module.children(), None) is not None:
        return None
    fused = _FusedRmsNorm(module, eps)
    return fused if _agrees(module, fused, _probe(weight.shape[0], weight.dtype, generator)) else None


def _fused_mlp(module: nn.Module, dtype: torch.dtype, generator: torch.Generator) -> _FusedGatedMlp | None:
    parts = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")]
    if not all(isinstance(part, nn.Module) for part in parts):
        return None
    width = getattr(parts[0], "in_features", None)
    if not isinstance(width, int):
        return None
    fused = _FusedGatedMlp(module)
    return fused if _agrees(module, fused, _probe(width, dtype, generator)) else None


def fuse_layers(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    """Give every RMS norm and SiLU-gated MLP of `model` (whose activations are in `dtype`) the
    kernels' forward; returns how many of each. The CPU kernels must be loaded."""
    generator = torch.Generator().manual_seed(0)
    counts = {"RMS norms": 0, "gated MLPs": 0}
    for module in model.modules():
        if (fused := _fused_norm(module, generator)) is not None:
            counts["RMS norms"] += 1
        elif dtype in _DTYPES and (fused := _fused_mlp(module, dtype, generator)) is not None:
            counts["gated MLPs"] += 1
        else:
            continue
        module.forward = fused
    logger.info("on the CPU's kernels: %s", ", ".join(f"{count} {kind}" for kind, count in counts.items()))
    return counts
