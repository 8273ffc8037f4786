"""RMS normalisation in one pass on the CPU, in place of the eight tensor operations of transformers'
norm modules (each a pass over memory and a dispatch, for every norm of every layer at every step).

Norm layers are recognised by what they compute, not by name: each leaf module with a
one-dimensional weight and an epsilon (`variance_epsilon` or `eps`) is run on a probe input by itself
and by the kernel (`cpu_decode.rms_norm`, transformers' Llama formula), and its forward becomes the
kernel only where the two agree within the dtype's rounding. Norms of other formulas (Gemma's
`1 + weight`, layer norms with a mean and a bias) disagree and keep their own forward.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from inference.engine import cpu_decode

logger = logging.getLogger(__name__)

_PROBE_ROWS = 4


def _epsilon(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


class _FusedRmsNorm:
    """A norm module's forward, replaced by the kernel; inputs of another dtype than its weight (which
    the kernel does not mix) go through the module's own forward."""

    def __init__(self, module: nn.Module, eps: float) -> None:
        self.module = module
        self.eps = eps
        self.original = module.forward

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.module.weight
        if hidden.dtype != weight.dtype:
            return self.original(hidden)
        return cpu_decode.rms_norm(hidden, weight, self.eps)


@torch.inference_mode()
def _computes_rms_norm(
    module: nn.Module, weight: torch.Tensor, eps: float, generator: torch.Generator
) -> bool:
    probe = (torch.randn(_PROBE_ROWS, weight.shape[0], generator=generator) * 3).to(weight.dtype)
    expected = module(probe)
    if (
        not isinstance(expected, torch.Tensor)
        or expected.shape != probe.shape
        or expected.dtype != probe.dtype
    ):
        return False
    try:
        torch.testing.assert_close(cpu_decode.rms_norm(probe, weight, eps), expected)
    except AssertionError:
        return False
    return True


def fuse_rms_norms(model: nn.Module) -> int:
    """Give every RMS norm of `model` (on the CPU, the kernels loaded) the kernel's forward; returns
    how many."""
    generator = torch.Generator().manual_seed(0)
    fused = 0
    for module in model.modules():
        weight, eps = getattr(module, "weight", None), _epsilon(module)
        if (
            eps is None
            or not isinstance(weight, torch.Tensor)
            or weight.dim() != 1
            or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16)
            or next(module.children(), None) is not None
            or not _computes_rms_norm(module, weight, eps, generator)
        ):
            continue
        module.forward = _FusedRmsNorm(module, eps)
        fused += 1
    logger.info("%d RMS norm layers run the CPU kernel", fused)
    return fused
