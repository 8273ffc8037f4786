"""Which layers tensor parallelism splits, and how, decided from the model's own modules.

Megatron-style: in every decoder layer the projections that fan out (query/key/value, gate/up) are
column-parallel, each rank holding a slice of their output features, i.e. its own attention heads and
its own share of the MLP; the projections that fan back in (attention output, down) are row-parallel,
each rank holding the matching slice of their input features and producing a partial sum that one
all-reduce (on the default process group, see group.py) completes. Attention itself then runs per rank
on its heads with no communication, so the paged attention and its KV cache stay as they are, just
with fewer heads. Norms are replicated; the embedding and the LM head are split by vocabulary
(README: vocabulary-parallel against replicated).
"""

from __future__ import annotations

import enum

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

# Leaf names of the projections across the architectures the engine serves (Llama, Qwen2/3, Mistral,
# Gemma, GPT-NeoX). GPT-NeoX's fused `query_key_value` stores its rows head by head ([q, k, v] per
# head), so a contiguous slice of rows is whole heads.
_COLUMN_PARALLEL = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "query_key_value",
                              "dense_h_to_4h"})  # fmt: skip
_ROW_PARALLEL = frozenset({"o_proj", "down_proj", "dense", "dense_4h_to_h"})
# Attention modules that keep head counts as attributes (most reshape with -1 and keep none).
_HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "num_key_value_heads")


class TensorParallelError(ValueError):
    """The model cannot be split over the requested number of ranks; the message says which part."""


class HeadsNotDivisibleError(TensorParallelError):
    """Attention or KV head counts that the tensor-parallel size does not divide."""


class Split(enum.Enum):
    COLUMN = "column"  # output features split: weight rows, bias
    ROW = "row"  # input features split: weight columns; the bias is added once, after the all-reduce


def check_head_counts(config: PretrainedConfig, world_size: int) -> None:
    """Refuse a model whose heads cannot be dealt out evenly: every rank needs whole heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    for name, count in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if count % world_size:
            raise HeadsNotDivisibleError(
                f"{type(config).__name__}.{name} = {count} is not divisible by tensor_parallel_size="
                f"{world_size}; choose a size that divides {count}"
            )


def plan_splits(model: nn.Module, world_size: int) -> dict[str, Split]:
    """How each linear of the decoder is split; a linear the plan does not know is refused, since
    leaving it whole would be wrong for some layouts and silently wasteful for others."""
    check_head_counts(model.config, world_size)
    output_layer = model.get_output_embeddings()
    plan: dict[str, Split] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output_layer:
            continue
        leaf = name.rpartition(".")[2]
        if leaf in _COLUMN_PARALLEL:
            split, features = Split.COLUMN, module.out_features
        elif leaf in _ROW_PARALLEL:
            split, features = Split.ROW, module.in_features
        else:
            raise TensorParallelError(
                f"tensor parallelism does not know how to split layer {name!r} of {type(model).__name__}"
            )
        if features % world_size:
            raise TensorParallelError(
                f"layer {name!r} has {features} features to split, not divisible by tensor_parallel_size="
                f"{world_size}"
            )
        plan[name] = split
    if not plan:
        raise TensorParallelError(f"{type(model).__name__} has no attention or MLP projection to split")
    return plan


def shard_range(size: int, rank: int, world_size: int) -> slice:
    per_rank = size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


class RowParallelLinear(nn.Module):
    """A linear whose input features are split over the ranks: each rank multiplies its slice and one
    all-reduce sums the partial outputs. Only rank 0's shard carries the bias, so it is added once."""

    def __init__(self, shard: nn.Module) -> None:
        super().__init__()
        self.shard = shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = self.shard(x)
        dist.all_reduce(partial)
        return partial


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)


def localize_head_counts(model: nn.Module, world_size: int) -> None:
    """Attention modules that record head counts get this rank's share, so that nothing reading them
    reshapes by the global count."""
    for module in model.modules():
        if not hasattr(module, "layer_idx"):  # attention modules know their layer; MLPs and norms do not
            continue
        for attribute in _HEAD_COUNT_ATTRIBUTES:
            count = getattr(module, attribute, None)
            if isinstance(count, int):
                setattr(module, attribute, count // world_size)


def vocab_range(vocab_size: int, rank: int, world_size: int) -> slice:
    """The rank's token ids: contiguous, the last rank's slice shorter when the size does not divide."""
    per_rank = -(-vocab_size // world_size)
    return slice(min(vocab_size, rank * per_rank), min(vocab_size, (rank + 1) * per_rank))


class VocabParallelEmbedding(nn.Module):
    """The embedding rows of the rank's token ids: other ids look up zeros, and one all-reduce gives
    every rank every row."""

    def __init__(self, weight: torch.Tensor, first_id: int, num_embeddings: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.first_id = first_id
        self.num_embeddings = num_embeddings

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        local = token_ids - self.first_id
        outside = (local < 0) | (local >= self.weight.shape[0])
        rows = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill_(outside.unsqueeze(-1), 0)
        dist.all_reduce(rows)
        return rows


class VocabParallelLMHead(nn.Module):
    """The logits of the rank's token ids; one all-gather puts the whole vocabulary's logits together."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, vocab_size: int, world_size: int
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.vocab_size = vocab_size
        self.world_size = world_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight, self.bias)
        # All-gather needs equal parts: the last rank's shorter slice is padded, and the padding cut off.
        per_rank = -(-self.vocab_size // self.world_size)
        logits = F.pad(logits, (0, per_rank - logits.shape[-1])).contiguous()
        parts = [torch.empty_like(logits) for _ in range(self.world_size)]
        dist.all_gather(parts, logits)
        return torch.cat(parts, dim=-1)[..., : self.vocab_size]
