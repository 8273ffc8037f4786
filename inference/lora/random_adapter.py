"""Random LoRA adapters made and saved by peft, for the demo model, tests and benchmarks."""

from __future__ import annotations

import copy
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from inference.tiny_model import tiny_model_config

# Llama-style attention and MLP projections: what fine-tuning scripts target by default.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_random_adapter(
    base: PreTrainedModel,
    out_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    lora_alpha: int = 16,
    target_modules: Sequence[str] = LLAMA_TARGETS,
    use_rslora: bool = False,
) -> Path:
    """A LoRA adapter for `base` (left unchanged) with random A and B, saved as peft saves a trained one.

    Both matrices are drawn with the base model's initializer range: a trained adapter's B is not zero,
    and an adapter that barely moved the outputs would show nothing in a demo or a test.
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules),
        use_rslora=use_rslora,
        init_lora_weights=False,
    )
    with warnings.catch_warnings():
        # peft asks transformers a question transformers has renamed; nothing for a caller to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(copy.deepcopy(base), config)
    generator = torch.Generator().manual_seed(seed)
    std = getattr(base.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    peft_model.save_pretrained(out_dir)
    return out_dir


def make_tiny_lora(name: str, out_dir: Path) -> Path:
    """A random adapter for the demo model, different for every name and the same for the same name."""
    with torch.device("meta"):
        shapes_only = AutoModelForCausalLM.from_config(tiny_model_config())
    return save_random_adapter(shapes_only.to_empty(device="cpu"), out_dir, seed=zlib.crc32(name.encode()))
