"""The int8 schemes, and which one `int8` means on a given device."""

from __future__ import annotations

from typing import Literal, get_args

import torch

Scheme = Literal["int8-weight-only", "int8-dynamic"]
SCHEMES: tuple[Scheme, ...] = get_args(Scheme)


class QuantizationError(RuntimeError):
    """A model cannot be quantized, or a quantized checkpoint cannot be read; the message says why."""


def resolve_scheme(requested: str, device: torch.device) -> Scheme:
    """`int8` picks the fastest scheme for the device (`python -m inference.bench.int8_kernels`).

    Decode on a GPU is bound by memory bandwidth, so weight-only int8 (half the bytes of bf16) is the
    win there. On CPU, fbgemm's int8 x int8 dynamic kernels beat both float32 and the weight-only
    kernels at every batch size measured.
    """
    if requested == "int8":
        return "int8-dynamic" if device.type == "cpu" else "int8-weight-only"
    if requested not in SCHEMES:
        raise QuantizationError(f"unknown scheme {requested!r}; expected int8 or one of {SCHEMES}")
    check_scheme_runs_on(requested, device)
    return requested


def check_scheme_runs_on(scheme: Scheme, device: torch.device) -> None:
    if scheme == "int8-dynamic" and device.type != "cpu":
        raise QuantizationError(
            f"int8-dynamic runs on CPU only (fbgemm kernels); on {device.type} use int8-weight-only"
        )
