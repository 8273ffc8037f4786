"""One rank's shard of a checkpoint, read slice by slice: no rank ever holds the whole model.

The model is first built with its parameters on the meta device (no memory), its linears are then
replaced by shards read straight from the safetensors files (`get_slice` reads only the rows or columns
the rank keeps), and the replicated tensors (embeddings, norms, LM head) are read whole. The same path
reads Hugging Face checkpoints and the int8 checkpoints `python -m inference quantize` writes; an int8
shard keeps the checkpoint's int8 values and per-output-channel scales, so every rank computes exactly
what the single-process int8 model computes for its features.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

from inference.parallel.sharding import (
    RowParallelLinear,
    Split,
    VocabParallelEmbedding,
    VocabParallelLMHead,
    localize_head_counts,
    set_module,
    shard_range,
    vocab_range,
)
from inference.quantize.checkpoint import QuantizationRecord
from inference.quantize.int8_linear import int8_linear, quantize_per_channel
from inference.quantize.schemes import Scheme

_INDEX_FILE = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"


class ShardLoadError(ValueError):
    """The checkpoint cannot be read shard by shard: no safetensors files, or tensors missing."""


def checkpoint_files(model_dir: Path, record: QuantizationRecord | None) -> list[Path]:
    if record is not None:
        return [model_dir / record.weights_file]
    index = model_dir / _INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    if (model_dir / _SINGLE_FILE).is_file():
        return [model_dir / _SINGLE_FILE]
    raise ShardLoadError(
        f"{model_dir} has no safetensors weights ({_SINGLE_FILE} or {_INDEX_FILE}); tensor parallelism "
        "reads slices of safetensors files"
    )


def checkpoint_key_names(model: PreTrainedModel) -> Callable[[str], str]:
    """Checkpoint key -> the model's parameter name, by the renamings transformers itself applies when
    loading (e.g. GPT-NeoX's `embed_out` is now `lm_head`). Keys that transformers would convert (fuse,
    split, permute) are refused: a rank cannot slice a tensor that does not exist yet."""
    transforms = get_model_conversion_mapping(model)
    renamings = [transform for transform in transforms if isinstance(transform, WeightRenaming)]
    converters = [transform for transform in transforms if isinstance(transform, WeightConverter)]

    def name_of(key: str) -> str:
        name, converter = rename_source_key(key, renamings, converters)
        if converter is not None:
            raise ShardLoadError(
                f"checkpoint tensor {key!r} needs a conversion ({converter}) before it can be split"
            )
        return name

    return name_of


class CheckpointSlices(contextlib.ExitStack):
    """Every tensor of a (possibly multi-file) safetensors checkpoint by the model's parameter names,
    readable whole or by slice."""

    def __init__(self, files: Iterable[Path], name_of: Callable[[str], str]) -> None:
        super().__init__()
        self._source: dict[str, tuple[Any, str]] = {}
        for path in files:
            handle = self.enter_context(safe_open(str(path), framework="pt"))
            self._source.update((name_of(key), (handle, key)) for key in handle.keys())  # noqa: SIM118

    def __contains__(self, name: str) -> bool:
        return name in self._source

    def read(self, name: str, dim: int | None = None, part: slice = slice(None)) -> torch.Tensor:
        """The tensor `name`, or only `part` of it along `dim`."""
        if name not in self._source:
            raise ShardLoadError(f"the checkpoint has no tensor for {name!r}")
        handle, key = self._source[name]
        view = handle.get_slice(key)
        if dim is None:
            return view[:] if view.get_shape() else handle.get_tensor(key)
        return view[(slice(None),) * dim + (part,)]


def empty_model(model_dir: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The model's modules with parameters on the meta device; buffers computed at init (rotary
    frequencies) stay real, since no checkpoint holds them."""
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.contiguous(), requires_grad=False)


def _float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = _parameter(weight)
    if bias is not None:
        linear.bias = _parameter(bias)
    return linear


class ShardReader:
    """Builds this rank's shard of each split linear from the checkpoint."""

    def __init__(
        self,
        checkpoint: CheckpointSlices,
        rank: int,
        world_size: int,
        dtype: torch.dtype,
        scheme: Scheme | None,
        int8_in_checkpoint: frozenset[str],
    ) -> None:
        self.checkpoint = checkpoint
        self.rank = rank
        self.world_size = world_size
        self.dtype = dtype
        self.scheme = scheme
        self.int8_in_checkpoint = int8_in_checkpoint

    def _part(self, size: int) -> slice:
        return shard_range(size, self.rank, self.world_size)

    def linear(self, name: str, split: Split, linear: nn.Linear) -> nn.Module:
        column = split is Split.COLUMN
        dim = 0 if column else 1
        part = self._part(linear.out_features if column else linear.in_features)
        # What is per output feature (bias, int8 scales): a column shard's own rows, a row shard's all.
        per_output = (0, part) if column else ()
        bias = None
        # A row-parallel bias belongs to the summed output: only rank 0 adds it.
        if linear.bias is not None and (column or self.rank == 0):
            bias = self.checkpoint.read(f"{name}.bias", *per_output).to(self.dtype)
        if name in self.int8_in_checkpoint:
            assert self.scheme is not None
            weight = self.checkpoint.read(f"{name}.weight", dim, part)
            scale = self.checkpoint.read(f"{name}.weight_scale", *per_output)
            return int8_linear(self.scheme, weight.to(torch.int8), scale, bias, self.dtype)
        if self.scheme is None:
            return _float_linear(self.checkpoint.read(f"{name}.weight", dim, part).to(self.dtype), bias)
        if column:
            # Whole rows: the per-row scales are those of the unsplit weight.
            int8, scale = quantize_per_channel(self.checkpoint.read(f"{name}.weight", 0, part).to(self.dtype))
            return int8_linear(self.scheme, int8, scale, bias, self.dtype)
        # A row's scale needs the whole row: quantize this one weight unsplit, then keep the rank's columns.
        int8, scale = quantize_per_channel(self.checkpoint.read(f"{name}.weight").to(self.dtype))
        return int8_linear(self.scheme, int8[:, part].contiguous(), scale, bias, self.dtype)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _split_vocabulary(
    model: PreTrainedModel, checkpoint: CheckpointSlices, rank: int, world_size: int, dtype: torch.dtype
) -> None:
    """Swap in the vocabulary-parallel embedding and LM head where they are plain layers (a scaled or
    otherwise special embedding stays replicated: its forward is not ours to rewrite)."""
    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    embedding_key = f"{_module_name(model, embeddings)}.weight"
    rows = None
    if type(embeddings) is nn.Embedding:
        part = vocab_range(embeddings.num_embeddings, rank, world_size)
        rows = checkpoint.read(embedding_key, 0, part).to(dtype)
        swapped = VocabParallelEmbedding(rows, part.start, embeddings.num_embeddings)
        set_module(model, _module_name(model, embeddings), swapped)
    if type(output) is nn.Linear:
        name = _module_name(model, output)
        part = vocab_range(output.out_features, rank, world_size)
        tied = getattr(model.config, "tie_word_embeddings", False) and f"{name}.weight" not in checkpoint
        if not tied:
            rows = checkpoint.read(f"{name}.weight", 0, part).to(dtype)
        elif rows is None:  # tied to an embedding kept whole
            rows = checkpoint.read(embedding_key, 0, part).to(dtype)
        bias = checkpoint.read(f"{name}.bias", 0, part).to(dtype) if output.bias is not None else None
        set_module(model, name, VocabParallelLMHead(rows, bias, output.out_features, world_size))


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    parent_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(parent_name)
    if leaf in module._parameters:
        module._parameters[leaf] = _parameter(tensor)
    else:
        module._buffers[leaf] = tensor


def _meta_tensors(model: nn.Module) -> list[str]:
    named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    return [name for name, tensor in named if tensor.is_meta]


def load_shard(
    model: PreTrainedModel,
    plan: dict[str, Split],
    files: list[Path],
    rank: int,
    world_size: int,
    dtype: torch.dtype,
    scheme: Scheme | None,
    int8_in_checkpoint: frozenset[str],
    split_vocabulary: bool = True,
) -> PreTrainedModel:
    """Fill `model` (from `empty_model`) with this rank's shard, on the CPU, ready to move."""
    with CheckpointSlices(files, checkpoint_key_names(model)) as checkpoint:
        reader = ShardReader(checkpoint, rank, world_size, dtype, scheme, int8_in_checkpoint)
        for name, split in plan.items():
            shard = reader.linear(name, split, model.get_submodule(name))
            set_module(model, name, RowParallelLinear(shard) if split is Split.ROW else shard)
        if split_vocabulary:
            _split_vocabulary(model, checkpoint, rank, world_size, dtype)
        for name in _meta_tensors(model):
            if name in checkpoint:
                tensor = checkpoint.read(name)
                _assign(model, name, tensor.to(dtype) if tensor.is_floating_point() else tensor)
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight.is_meta and getattr(model.config, "tie_word_embeddings", False):
        output.weight = embeddings.weight
    missing = _meta_tensors(model)
    if missing:
        raise ShardLoadError(f"the checkpoint lacks {len(missing)} tensors: {', '.join(missing[:5])}")
    localize_head_counts(model, world_size)
    return model.eval()
