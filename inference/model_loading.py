"""Load a local Hugging Face causal LM (or make the tiny demo model) onto the right device and dtype."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from inference.config import ServerConfig
from inference.lora import LoraRegistry
from inference.parallel.group import rank_device
from inference.parallel.sharding import TensorParallelError
from inference.quantize import (
    QuantizationError,
    is_quantized_checkpoint,
    load_quantized_checkpoint,
    quantize_loaded_model,
)
from inference.tiny_model import make_tiny_model

if TYPE_CHECKING:
    from inference.parallel.workers import WorkerPool

# The first of these that a model's config sets is its context length.
_CONTEXT_LENGTH_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
# torch.cpu's (private) probes of the instructions that compute bfloat16 dot products.
_CPU_BFLOAT16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model directory is missing, incomplete or not a causal LM; the message says which."""


@dataclass
class ModelIdentity:
    """What a model is served as, loaded or not."""

    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    name: str
    max_model_len: int
    quantization: str


@dataclass
class ServedModel(ModelIdentity):
    """What the API layer knows of the model it serves: names, limits and tokenizer, no weights. Behind
    an engine process, the API process holds this; in-process, the `LoadedModel` itself plays it."""

    vocab_size: int
    eos_token_ids: frozenset[int]
    adapter_names: list[str]  # the LoRA adapters served, each under its own model id


@dataclass(kw_only=True)
class LoadedModel(ModelIdentity):
    model: PreTrainedModel
    adapters: LoraRegistry  # the LoRA adapters served on this model, each under its own model id
    # The other ranks when the model is split over several processes (tensor_parallel_size > 1).
    workers: WorkerPool | None = None

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    @property
    def adapter_names(self) -> list[str]:
        return [adapter.name for adapter in self.adapters]

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokens that end a sequence: the generation config's, else the tokenizer's."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return frozenset()
        return frozenset(eos if isinstance(eos, list) else [eos])

    def served(self) -> ServedModel:
        """What an API process needs to know of this model (its adapters as they are now)."""
        return ServedModel(**{field.name: getattr(self, field.name) for field in fields(ServedModel)})

    def close(self) -> None:
        """Stop the other ranks, if any; the model is unusable afterwards when it had some."""
        if self.workers is not None:
            self.workers.close()


# What the API layer reads of the model: the same attributes on both.
ModelFacts = ServedModel | LoadedModel


def tiny_demo_model_dir() -> Path:
    """Where the demo model is cached between runs: `$XDG_CACHE_HOME/llm-serving/tiny-demo`."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "llm-serving" / "tiny-demo"


def ensure_tiny_demo_model() -> Path:
    directory = tiny_demo_model_dir()
    if not (directory / "config.json").is_file():
        # Write into a sibling and rename, so that a crash never leaves a half-written model to re-use.
        staging = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
        make_tiny_model(staging)
        shutil.rmtree(directory, ignore_errors=True)
        try:
            staging.replace(directory)
        except OSError:  # another process finished first; its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("device=cuda was requested but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype the checkpoint's config.json records (`dtype`, or `torch_dtype` before transformers 5)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX), with which bfloat16
    matmuls run about twice as fast as float32 ones; elsewhere bfloat16 is emulated and slower."""
    return any(getattr(torch.cpu, check, lambda: False)() for check in _CPU_BFLOAT16_CHECKS)


def pick_dtype(requested: str, device: torch.device, model_dir: Path) -> torch.dtype:
    """`auto`: bfloat16 on CUDA; on the CPU, a 16-bit checkpoint runs in bfloat16 where the CPU computes
    it natively (as vLLM's CPU backend), anything else in float32."""
    if requested != "auto":
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16
    sixteen_bit = checkpoint_dtype(model_dir) in ("bfloat16", "float16")
    return torch.bfloat16 if sixteen_bit and cpu_computes_bfloat16() else torch.float32


def context_length(model: PreTrainedModel, requested: int | None) -> int:
    """The configured limit, checked against what the model was trained for."""
    model_limit = next(
        (
            getattr(model.config, name)
            for name in _CONTEXT_LENGTH_ATTRIBUTES
            if getattr(model.config, name, None)
        ),
        None,
    )
    if requested is None:
        if model_limit is None:
            raise ModelLoadError("the model config states no context length; set max_model_len")
        return int(model_limit)
    if model_limit is not None and requested > model_limit:
        raise ModelLoadError(f"max_model_len={requested} exceeds the model's context length {model_limit}")
    return requested


def apply_quantization(model: PreTrainedModel, config: ServerConfig) -> str:
    """The one place where a loaded model is quantized; returns the scheme now in effect."""
    return "none" if config.quantization == "none" else quantize_loaded_model(model, config)


def load_quantized(
    model_dir: Path, device: torch.device, dtype: torch.dtype, config: ServerConfig
) -> tuple[PreTrainedModel, str]:
    """A checkpoint written by `python -m inference quantize`, served with the scheme it records."""
    model, record = load_quantized_checkpoint(model_dir, device, dtype)
    if config.quantization not in ("none", "int8", record.scheme):
        raise ModelLoadError(
            f"{model_dir} is quantized with {record.scheme}; "
            f"serve it with quantization none or {record.scheme}"
        )
    return model, record.scheme


def model_directory(config: ServerConfig) -> Path:
    """The model's directory: `model_path`, or the demo model (made on first use)."""
    model_dir = config.model_path if config.model_path is not None else ensure_tiny_demo_model()
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    return model_dir


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {error}") from error


def load_model(config: ServerConfig, *, split_vocabulary: bool = True) -> LoadedModel:
    """`split_vocabulary` (tensor parallelism only): embedding and LM head split by vocabulary, or
    replicated on every rank (what `bench --tensor-parallel-size` compares)."""
    model_dir = model_directory(config)
    tokenizer = load_tokenizer(model_dir)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device, model_dir)
    workers = None
    try:
        if config.tensor_parallel_size > 1:
            from inference.parallel.workers import start_tensor_parallel

            device = rank_device(device, 0)
            model, quantization, workers = start_tensor_parallel(
                model_dir, config, device, dtype, split_vocabulary
            )
        elif is_quantized_checkpoint(model_dir):
            model, quantization = load_quantized(model_dir, device, dtype, config)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
            model = model.to(device).eval()
            quantization = apply_quantization(model, config)
    except QuantizationError as error:
        raise ModelLoadError(str(error)) from error
    except TensorParallelError:
        raise  # named, and the message says which head count or layer
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load a causal LM from {model_dir}: {error}") from error
    name = config.served_model_name or (model_dir.name if config.model_path is not None else "tiny-demo")
    try:
        max_model_len = context_length(model, config.max_model_len)
    except ModelLoadError:
        if workers is not None:
            workers.close()
        raise
    adapters = LoraRegistry(model, name, config.max_loras, config.max_lora_rank)
    if config.lora_modules:
        from inference.lora.adapter import read_lora_adapter  # peft: imported only when needed

        for module in config.lora_modules:
            # LoraAdapterError (UnsupportedLoraError for DoRA and the like) stops the start-up by name.
            adapters.add(read_lora_adapter(module.name, module.path, device, dtype))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        name=name,
        max_model_len=max_model_len,
        quantization=quantization,
        adapters=adapters,
        workers=workers,
    )
