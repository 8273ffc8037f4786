"""Paged decode attention compiled by `torch.compile`: the CPU's way of reading K/V straight from the
block pool.

The attention is written as plain tensor operations on the pool indexed by each decode's slots
(multiply and sum for the scores, softmax, weighted sum of the values). Inductor fuses the indexing
into the loops of the reductions, so each key and value is loaded from its block where it lies: the
gathered copy of every context that the SDPA path writes, and reads again, in every layer of every
step never exists. GQA, sliding windows and latent value sizes as the Triton kernel; scores and
sums in float32 whatever the cache's dtype.

Inductor specialises a graph on any size that is 0 or 1, on strides, and, by default, on sizes that
happen to be equal when it first traces. So batches and block tables are padded to at least two and
made contiguous, and the first call (the engine's warm-up, before readiness) is traced with no two
sizes tied: one graph then serves every batch size and context length, and nothing compiles while
requests wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.fx.experimental._config as symbolic_shapes_config
import torch.nn.functional as F

_MIN_SIZE = 2


def _attend(
    query: torch.Tensor,  # [B, heads, head_dim]
    keys: torch.Tensor,  # [kv_heads, slots, head_dim]
    values: torch.Tensor,  # [kv_heads, slots, value_dim]
    block_tables: torch.Tensor,  # [B, W]
    firsts: torch.Tensor,  # [B]: first position each decode attends to (its sliding window's start)
    ends: torch.Tensor,  # [B]: context length, the new token included
    block_size: int,
    scale: float,
) -> torch.Tensor:
    batch, width = block_tables.shape
    kv_heads, heads = keys.shape[0], query.shape[1]
    offsets = torch.arange(block_size, device=query.device)
    slots = (block_tables[:, :, None] * block_size + offsets).reshape(batch, width * block_size)
    context_keys = keys[:, slots].float()  # [kv_heads, B, L, head_dim]: fused into the loads, not copied
    context_values = values[:, slots].float()
    # The query heads sharing a KV head: [kv_heads, B, group, head_dim].
    grouped = query.float().reshape(batch, kv_heads, heads // kv_heads, -1).permute(1, 0, 2, 3)
    scores = (grouped[:, :, :, None, :] * context_keys[:, :, None, :, :]).sum(-1) * scale
    positions = torch.arange(width * block_size, device=query.device)
    outside = (positions >= ends[:, None, None]) | (positions < firsts[:, None, None])  # [B, 1, L]
    weights = scores.masked_fill(outside[None], float("-inf")).softmax(-1)
    attended = (weights[..., None] * context_values[:, :, None]).sum(-2)  # [kv_heads, B, group, value_dim]
    return attended.permute(1, 0, 2, 3).reshape(batch, heads, -1).to(query.dtype)


_compiled_attend = torch.compile(_attend, dynamic=True)


@contextlib.contextmanager
def untied_sizes() -> Iterator[None]:
    """Trace with every size its own symbol, so that no size equal by chance in the first call (a
    batch of 2 and 2 KV heads, say) is guarded equal, which would compile again when they differ."""
    with symbolic_shapes_config.patch(use_duck_shape=False):
        yield


def paged_decode_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_tables: torch.Tensor,
    ends: torch.Tensor,
    block_size: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Attention of one new token per sequence over its cached context; `[B, heads, value_dim]`."""
    batch, width = block_tables.shape
    if batch == 0:
        return query.new_empty(0, query.shape[1], values.shape[2])
    firsts = (ends - sliding_window).clamp(min=0) if sliding_window else torch.zeros_like(ends)
    pad_rows, pad_blocks = max(0, _MIN_SIZE - batch), max(0, _MIN_SIZE - width)
    if pad_rows or pad_blocks:
        # Padding rows attend to one position of block 0; padding blocks lie past every end.
        query = F.pad(query, (0, 0, 0, 0, 0, pad_rows))
        block_tables = F.pad(block_tables, (0, pad_blocks, 0, pad_rows))
        firsts = F.pad(firsts, (0, pad_rows))
        ends = F.pad(ends, (0, pad_rows), value=1)
    # Contiguous, so that no stride (which may depend on the batch) is guarded on.
    query, block_tables = query.contiguous(), block_tables.contiguous()
    output = _compiled_attend(query, keys, values, block_tables, firsts, ends, block_size, scale)
    return output[:batch]
