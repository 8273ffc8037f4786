"""int8 quantization: quantize a model once (`python -m inference quantize`) or at load time.

`int8-weight-only` stores int8 weights with per-output-channel scales and computes in the model's
dtype (the GPU scheme: decode reads half the bytes). `int8-dynamic` also quantizes activations on
the fly and runs fbgemm's int8 kernels (the fastest CPU path). `int8` picks one for the device.
"""

from __future__ import annotations

from inference.quantize.checkpoint import (
    QuantizationRecord,
    is_quantized_checkpoint,
    load_quantized_checkpoint,
    read_record,
    save_quantized_checkpoint,
)
from inference.quantize.cli import main, quantize_directory, quantize_loaded_model
from inference.quantize.schemes import SCHEMES, QuantizationError, Scheme, resolve_scheme
from inference.quantize.swap import int8_modules, quantize_model

__all__ = [
    "SCHEMES",
    "QuantizationError",
    "QuantizationRecord",
    "Scheme",
    "int8_modules",
    "is_quantized_checkpoint",
    "load_quantized_checkpoint",
    "main",
    "quantize_directory",
    "quantize_loaded_model",
    "quantize_model",
    "read_record",
    "resolve_scheme",
    "save_quantized_checkpoint",
]
