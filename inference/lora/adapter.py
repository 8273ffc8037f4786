"""Reading a LoRA adapter directory with peft's own config and weight loading, refusing what we can't
compute exactly.

A served adapter is a set of `(A, B)` pairs, one per targeted linear layer of the base model, with
peft's scaling (`lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA) folded into `B`, so that a
layer adds `(x @ A.T) @ B.T` to its base output. Options that make peft compute something else
(DoRA, trained biases, replaced modules, base-altering initialisations, ...) are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, load_peft_weights
from peft.utils.other import get_pattern_key

from inference.lora.weights import LoraAdapter, LoraAdapterError, LoraWeights, UnsupportedLoraError

CONFIG_FILE = "adapter_config.json"
# The prefix peft gives every key of a saved adapter: the PeftModel's wrapped base model.
_PEFT_KEY_PREFIX = "base_model.model."
_A_SUFFIX, _B_SUFFIX = ".lora_A.weight", ".lora_B.weight"

# LoraConfig fields that do not change what a trained adapter computes at inference.
_INERT_FIELDS = frozenset({
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout",
    "use_rslora", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "runtime_config", "megatron_core", "qalora_group_size", "eva_config",
    "ensure_weight_tying",
})  # fmt: skip
# Initialisations that rewrite the base weights: their adapters only hold together with that new base.
_BASE_ALTERING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")
# How adapter configs written by other peft versions spell "option not used".
_UNSET = (None, False, {}, [], "none")


def read_lora_config(path: Path) -> LoraConfig:
    """The adapter's config, read by peft, after checking every option it sets can be served exactly."""
    if not (path / CONFIG_FILE).is_file():
        raise LoraAdapterError(f"{path} is not a LoRA adapter directory (no {CONFIG_FILE})")
    try:
        config = PeftConfig.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as error:
        raise LoraAdapterError(f"cannot read {path / CONFIG_FILE}: {error}") from error
    if not isinstance(config, LoraConfig):
        raise UnsupportedLoraError(f"{path} holds a {config.peft_type} adapter; only LoRA is served")
    _check_exact(config, path)
    return config


def _check_exact(config: LoraConfig, path: Path) -> None:
    if config.use_dora:
        raise UnsupportedLoraError(f"{path}: DoRA adapters (use_dora) are not supported; merge it with peft")
    init = config.init_lora_weights
    if isinstance(init, str) and init.lower().startswith(_BASE_ALTERING_INITS):
        raise UnsupportedLoraError(
            f"{path}: init_lora_weights={init!r} changes the base weights; convert the adapter to plain "
            "LoRA when saving (peft's path_initial_model_for_weight_conversion)"
        )
    defaults = LoraConfig()
    for field in dataclasses.fields(config):
        if field.name in _INERT_FIELDS:
            continue
        value, default = getattr(config, field.name), getattr(defaults, field.name)
        if value != default and value not in _UNSET:
            raise UnsupportedLoraError(
                f"{path}: the adapter sets {field.name}={value!r}, which the server does not compute; "
                "merge it into the base model instead (python -m inference merge-lora)"
            )


def adapter_weights_file(path: Path) -> Path:
    for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME):
        if (path / name).is_file():
            return path / name
    # Checked here: peft would otherwise look the directory up as a Hub repository.
    raise LoraAdapterError(f"{path} has no adapter weights ({SAFETENSORS_WEIGHTS_NAME})")


def _module_scaling(config: LoraConfig, module: str, rank: int) -> float:
    """peft's own rule: per-module rank and alpha from the patterns, alpha / r or alpha / sqrt(r)."""
    configured_rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
    if configured_rank != rank:
        raise LoraAdapterError(f"{module}: the weights have rank {rank}, the config says {configured_rank}")
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def read_lora_adapter(name: str, path: Path, device: torch.device, dtype: torch.dtype) -> LoraAdapter:
    """Read and check the adapter in `path`; its weights come back on `device` in `dtype`."""
    config = read_lora_config(path)
    weights_file = adapter_weights_file(path)
    try:
        state = load_peft_weights(str(path), device="cpu")
    except Exception as error:  # safetensors and torch.load raise a variety of types on bad files
        raise LoraAdapterError(f"cannot read the adapter weights {weights_file}: {error}") from error
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, suffix = _split_key(key, path)
        pairs.setdefault(module, {})[suffix] = tensor
    layers: dict[str, LoraWeights] = {}
    for module, pair in pairs.items():
        if set(pair) != {_A_SUFFIX, _B_SUFFIX}:
            raise LoraAdapterError(f"{weights_file}: {module} lacks its lora_A or lora_B weight")
        a, b = pair[_A_SUFFIX].float(), pair[_B_SUFFIX].float()
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise LoraAdapterError(f"{weights_file}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}")
        scaled_b = b * _module_scaling(config, module, a.shape[0])
        layers[module] = LoraWeights(a.to(device, dtype), scaled_b.to(device, dtype))
    if not layers:
        raise LoraAdapterError(f"{weights_file} holds no LoRA weights")
    return LoraAdapter(name, path, layers)


def _split_key(key: str, path: Path) -> tuple[str, str]:
    for suffix in (_A_SUFFIX, _B_SUFFIX):
        if key.startswith(_PEFT_KEY_PREFIX) and key.endswith(suffix):
            return key[len(_PEFT_KEY_PREFIX) : -len(suffix)], suffix
    # Embedding adapters, magnitude vectors, biases, saved modules: nothing the linear layers compute.
    raise UnsupportedLoraError(f"{path}: the adapter holds {key!r}; only LoRA on linear layers is served")
