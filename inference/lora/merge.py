"""`python -m inference merge-lora`: fold a LoRA adapter into its base model, one checkpoint to serve.

peft does the merge (so every option it supports, DoRA included, merges as peft computes it); the
result is a plain Hugging Face directory, written beside `--out` and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.lora.adapter import CONFIG_FILE, adapter_weights_file
from inference.lora.weights import LoraAdapterError
from inference.output_dir import output_dir_problem, staged_directory
from inference.quantize import is_quantized_checkpoint


class MergeError(RuntimeError):
    """The merge cannot run as asked; the message says why."""


def merge_lora(model_dir: Path, adapter_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    problem = output_dir_problem(out_dir, overwrite)
    if problem is not None:
        raise MergeError(problem)
    if not (model_dir / "config.json").is_file():
        raise MergeError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    if is_quantized_checkpoint(model_dir):
        raise MergeError(f"{model_dir} is an int8 checkpoint; merge into the original model, then quantize")
    if not (adapter_dir / CONFIG_FILE).is_file():
        raise MergeError(f"{adapter_dir} is not a LoRA adapter directory (no {CONFIG_FILE})")
    try:
        adapter_weights_file(adapter_dir)  # present locally: peft would otherwise ask the Hub for it
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True)
        merged = PeftModel.from_pretrained(base, str(adapter_dir), local_files_only=True).merge_and_unload()
    except (LoraAdapterError, OSError, ValueError, KeyError, RuntimeError) as error:
        raise MergeError(f"cannot merge {adapter_dir} into {model_dir}: {error}") from error
    with staged_directory(out_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference merge-lora",
        description="Merge a LoRA adapter into its base model and write one Hugging Face checkpoint.",
    )
    parser.add_argument("--model-path", type=Path, required=True, help="the base model directory")
    parser.add_argument("--adapter", type=Path, required=True, help="the adapter directory (peft format)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged model")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        out_dir = merge_lora(args.model_path, args.adapter, args.out, args.overwrite)
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the merged model to {out_dir}")
    return 0
