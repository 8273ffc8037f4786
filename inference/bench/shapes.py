"""Random-weight Llama models of named shapes, made locally with the byte-level demo tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from inference.tiny_model import write_random_llama

# "small" is wide enough for per-channel int8 to behave as on real models yet quick in tests, "wide"
# big enough on CPU for int8 to matter, "llama-1b" has the layer sizes of Llama 3.2 1B (GPU runs).
SHAPES: dict[str, dict[str, int]] = {
    "small": {
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
    },
    "wide": {
        "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
        "num_attention_heads": 16, "num_key_value_heads": 4,
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
