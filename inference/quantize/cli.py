"""`python -m inference quantize`: write a quantized checkpoint that `serve` loads with no other flag."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from inference.config import ServerConfig
from inference.quantize.checkpoint import (
    QuantizationRecord,
    is_quantized_checkpoint,
    save_quantized_checkpoint,
)
from inference.quantize.schemes import SCHEMES, QuantizationError, resolve_scheme
from inference.quantize.swap import quantize_model

WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def quantize_loaded_model(model: PreTrainedModel, config: ServerConfig) -> str:
    """Quantize a model already on its device, as `serve --quantization ...` asks; returns the scheme."""
    scheme = resolve_scheme(config.quantization, model.device)
    quantize_model(model, scheme)
    return scheme


def quantize_directory(model_dir: Path, out_dir: Path, scheme: str = "int8", overwrite: bool = False) -> Path:
    """Quantize the Hugging Face model in `model_dir` into `out_dir`; nothing is left behind on failure."""
    _check_source(model_dir)
    serving_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_scheme(scheme, serving_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as error:
        raise QuantizationError(f"cannot load the tokenizer from {model_dir}: {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True).eval()
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise QuantizationError(f"cannot read the model weights in {model_dir}: {error}") from error
    names = quantize_model(model, resolved)
    record = QuantizationRecord(scheme=resolved, quantized_modules=names)
    return save_quantized_checkpoint(model, tokenizer, record, model_dir, out_dir, overwrite=overwrite)


def _check_source(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise QuantizationError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise QuantizationError(f"{model_dir} has no config.json; expected a Hugging Face model directory")
    if is_quantized_checkpoint(model_dir):
        raise QuantizationError(f"{model_dir} is already a quantized checkpoint; quantize the original model")
    if not any(any(model_dir.glob(pattern)) for pattern in WEIGHT_FILE_PATTERNS):
        raise QuantizationError(f"{model_dir} has no weights file (*.safetensors or pytorch_model*.bin)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference quantize",
        description="Quantize a Hugging Face causal LM to int8 once; serve the result with --model-path.",
    )
    parser.add_argument("--model-path", type=Path, required=True, help="the Hugging Face model directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write the quantized checkpoint")
    parser.add_argument(
        "--scheme",
        choices=("int8", *SCHEMES),
        default="int8",
        help="int8 picks weight-only on a GPU machine and dynamic on a CPU-only one",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        out_dir = quantize_directory(args.model_path, args.out, args.scheme, args.overwrite)
    except QuantizationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the quantized checkpoint to {out_dir}")
    return 0
