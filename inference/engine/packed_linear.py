"""bfloat16 linear layers on the CPU with their weights reordered once, at start-up, into oneDNN's
blocked layout, as torch's own compiler does when it freezes a model for the CPU.

oneDNN's bfloat16 kernels read a weight fastest in a blocked layout that interleaves pairs of input
features, as the CPU's bfloat16 dot products take them; `torch.nn.functional.linear` hands them the
plain matrix, which they read as it is, more slowly (`ONEDNN_VERBOSE=1` shows both layouts;
`python -m inference.bench.int8_kernels` times both layers, `bench --step-profile` whole steps). The
arithmetic is oneDNN's either way; each layer is taken over only if a probe input gives the same
output, bit for bit. (An input whose rows are strided is multiplied as if it were contiguous, which
`F.linear` is not: it takes another kernel there, whose rounding differs. Models' layers get
contiguous rows.)

Only modules that are exactly `torch.nn.Linear` are packed: int8 layers, adapters' wrappers and
vocabulary-parallel heads keep their own forward (a wrapper's inner linear is packed). A head whose
weight is the input embeddings' keeps it, so that tied weights are never held twice.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

logger = logging.getLogger(__name__)

_PROBE_ROWS = 4


def packing_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether linear layers of `dtype` on `device` are packed: bfloat16 on a CPU that oneDNN runs it on."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class PackedLinear(nn.Module):
    """`torch.nn.Linear`'s forward over a weight in oneDNN's layout (an opaque tensor: its bytes are
    oneDNN's to read)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def engine_linear(out_features: int, in_features: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A linear layer of random weights as the engine runs one of that shape: packed where packing
    applies (a benchmark's stand-in for a layer of the engine's model)."""
    linear = nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
    return PackedLinear(linear) if packing_applies(device, dtype) else linear


@torch.inference_mode()
def _agrees(linear: nn.Linear, packed: PackedLinear, generator: torch.Generator) -> bool:
    probe = torch.randn(_PROBE_ROWS, linear.in_features, generator=generator).to(linear.weight.dtype)
    return torch.equal(packed(probe), linear(probe))


def pack_linear_layers(model: nn.Module) -> int:
    """Replace every bfloat16 `torch.nn.Linear` of `model` on the CPU by a `PackedLinear` that computes
    the same; returns how many were. A no-op where packing does not apply."""
    started = time.perf_counter()
    tied = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    generator = torch.Generator().manual_seed(0)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight is tied:
                continue
            if not packing_applies(child.weight.device, child.weight.dtype):
                continue
            packed = PackedLinear(child)
            if _agrees(child, packed, generator):
                setattr(parent, name, packed)
                replaced += 1
    if replaced:
        # A start-up cost that grows with the model, paid before readiness.
        logger.info("%d linear layers packed for oneDNN in %.1f s", replaced, time.perf_counter() - started)
    return replaced
