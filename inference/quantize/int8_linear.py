"""Drop-in replacements for `nn.Linear` that hold int8 weights with one scale per output channel.

Both modules expose the same state (`weight` int8 [out, in], `weight_scale` [out], optional `bias`),
so a quantized checkpoint is the same bytes whichever scheme serves it.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.quantize.schemes import Scheme

INT8_MAX = 127


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: `weight ~= int8 * scale[:, None]`, scale in float32.

    -128 is left unused so that negating a weight never overflows.
    """
    full = weight.detach().float()
    scale = (full.abs().amax(dim=1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    int8 = torch.round(full / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return int8, scale


class Int8Linear(nn.Module, ABC):
    """What both int8 modules share: their defining tensors."""

    in_features: int
    out_features: int

    @abstractmethod
    def int8_state(self) -> dict[str, torch.Tensor]:
        """`weight` (int8), `weight_scale` and, if the layer has one, `bias`."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8WeightOnlyLinear(Int8Linear):
    """int8 weights (half the bytes of bf16), activations and arithmetic in the model's dtype.

    The forward is written as `linear(x, int8.to(dtype)) * scale`, the form that torch.compile fuses
    into one kernel reading the int8 weights directly; run eagerly, it converts the weight per call.
    Scales stay float32 whatever the model's dtype, so a checkpoint quantized from bf16 weights
    serves the same answers as quantizing at load time.
    """

    def __init__(
        self, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int8_weight.shape
        self.register_buffer("weight", int8_weight)
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return out if self.bias is None else out + self.bias

    def int8_state(self) -> dict[str, torch.Tensor]:
        state = {"weight": self.weight, "weight_scale": self.weight_scale}
        if self.bias is not None:
            state["bias"] = self.bias
        return state


def _fbgemm_pack(int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    zero_points = torch.zeros(int8_weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch flags its quantized tensor dtypes for future removal; they remain the only entry to
        # fbgemm's packed int8 GEMM, which the CPU benchmark measures as the fastest path here.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        quantized = torch._make_per_channel_quantized_tensor(
            int8_weight.cpu(), scale.cpu().double(), zero_points, 0
        )
    float_bias = None if bias is None else bias.detach().float().cpu()
    return torch.ops.quantized.linear_prepack(quantized, float_bias)


class Int8DynamicLinear(Int8Linear):
    """int8 weights and int8 activations quantized on the fly per call (fbgemm, CPU only).

    The weights live only inside fbgemm's packed format; `int8_state` unpacks them for saving and for
    counting bytes, and loading a state dict packs them again.
    """

    # fbgemm's x86 kernels may saturate 16-bit intermediate sums on CPUs without VNNI unless
    # activations use 7 bits; torch's own x86 default makes the same choice.
    reduce_range = True

    def __init__(self, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = int8_weight.shape
        self._packed = _fbgemm_pack(int8_weight, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range)
        return out.to(x.dtype)

    def int8_state(self) -> dict[str, torch.Tensor]:
        quantized, bias = torch.ops.quantized.linear_unpack(self._packed)
        state = {"weight": quantized.int_repr(), "weight_scale": quantized.q_per_channel_scales().float()}
        if bias is not None:
            state["bias"] = bias
        return state

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for key, tensor in self.int8_state().items():
            destination[prefix + key] = tensor

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        current = self.int8_state()
        loaded: dict[str, torch.Tensor] = {}
        for key, tensor in current.items():
            if prefix + key not in state_dict:
                missing_keys.append(prefix + key)
            elif state_dict[prefix + key].shape != tensor.shape:
                error_msgs.append(
                    f"size mismatch for {prefix + key}: checkpoint {tuple(state_dict[prefix + key].shape)}, "
                    f"model {tuple(tensor.shape)}"
                )
            else:
                loaded[key] = state_dict[prefix + key]
        unexpected_keys.extend(
            key for key in state_dict if key.startswith(prefix) and key[len(prefix) :] not in current
        )
        if len(loaded) == len(current):
            self._packed = _fbgemm_pack(
                loaded["weight"].to(torch.int8), loaded["weight_scale"], loaded.get("bias")
            )


def int8_linear(
    scheme: Scheme,
    int8_weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> Int8Linear:
    if scheme == "int8-dynamic":
        return Int8DynamicLinear(int8_weight, scale, bias)
    return Int8WeightOnlyLinear(int8_weight, scale, bias, dtype)


def from_linear(scheme: Scheme, linear: nn.Linear) -> Int8Linear:
    int8_weight, scale = quantize_per_channel(linear.weight)
    return int8_linear(scheme, int8_weight, scale, linear.bias, linear.weight.dtype)


def empty_like_linear(scheme: Scheme, linear: nn.Linear) -> Int8Linear:
    """A placeholder of the right shapes, to be filled by `load_state_dict`."""
    device = linear.weight.device
    int8_weight = torch.zeros(linear.out_features, linear.in_features, dtype=torch.int8, device=device)
    scale = torch.ones(linear.out_features, device=device)
    bias = None if linear.bias is None else torch.zeros_like(linear.bias)
    return int8_linear(scheme, int8_weight, scale, bias, linear.weight.dtype)
