"""Random-weight Llama models of named shapes, made locally with the byte-level demo tokenizer."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import torch

from inference.config import Device, Dtype, ServerConfig
from inference.model_loading import LoadedModel, load_model
from inference.tiny_model import make_tiny_model, write_random_llama

# "small" is wide enough for per-channel int8 to behave as on real models yet quick in tests, "wide"
# big enough on CPU for int8 to matter, "llama-50m" a CPU-sized serving model (about 58M parameters,
# most of them in its 32000-token vocabulary), "llama-1b" the layer sizes of Llama 3.2 1B (GPU runs).
SHAPES: dict[str, dict[str, int]] = {
    "small": {
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
    },
    "wide": {
        "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
        "num_attention_heads": 16, "num_key_value_heads": 4,
    },
    "llama-50m": {
        "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000,
    },
    "llama-1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    },
}  # fmt: skip


def make_random_llama(out_dir: Path, shape: str, seed: int = 0) -> Path:
    """A random-weight Llama of a named shape with the byte-level tokenizer, in Hugging Face format."""
    return write_random_llama(
        out_dir, SHAPES[shape], seed=seed, dtype=torch.bfloat16, max_position_embeddings=2048
    )


def add_model_arguments(parser: argparse.ArgumentParser, default_shape: str) -> None:
    """The flags that pick the model a benchmark runs: a directory, or a random model of a named shape."""
    parser.add_argument("--model-path", type=Path, help="a Hugging Face model directory (default: --shape)")
    parser.add_argument("--shape", choices=("tiny", *SHAPES), default=default_shape,
                        help="random-weight Llama made locally when no --model-path is given")  # fmt: skip
    parser.add_argument("--device", choices=get_args(Device), default="auto")
    parser.add_argument("--dtype", choices=get_args(Dtype), default="auto")


@contextlib.contextmanager
def model_directory(model_path: Path | None, shape: str) -> Iterator[Path]:
    """`model_path`, or the `shape` model written to a directory that lives as long as the block."""
    if model_path is not None:
        yield model_path
        return
    with tempfile.TemporaryDirectory() as scratch:
        if shape == "tiny":
            yield make_tiny_model(Path(scratch) / "tiny")
        else:
            yield make_random_llama(Path(scratch) / shape, shape)


@contextlib.contextmanager
def loaded_model(model_path: Path | None, shape: str, device: str, dtype: str) -> Iterator[LoadedModel]:
    """The model `add_model_arguments`' flags pick, loaded as `serve` would load it."""
    with model_directory(model_path, shape) as model_dir:
        yield load_model(ServerConfig(model_path=model_dir, device=device, dtype=dtype))
