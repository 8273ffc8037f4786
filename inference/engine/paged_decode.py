"""Paged decode attention as a Triton kernel: each decode reads its keys and values straight from
the block pool through its block table, with no gathered copy of its context.

One program per (sequence, KV head) walks the sequence's blocks with an online softmax, for all the
query heads that share the KV head (GQA), skipping the blocks a sliding window leaves out. On a GPU
it replaces the gather + SDPA path of `attention.py`; the tests run it in Triton's interpreter on
the CPU (`TRITON_INTERPRET=1`) against that path. Triton is an optional dependency (the `gpu`
extra): without it, or without CUDA, the engine keeps the gather path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    query_ptr,  # [B, heads, head_dim]
    keys_ptr,  # [kv_heads, slots, head_dim]
    values_ptr,  # [kv_heads, slots, value_dim]
    tables_ptr,  # [B, W] int
    ends_ptr,  # [B] int: context length of each decode, its own token included
    output_ptr,  # [B, heads, value_dim]
    scale,
    window,  # 0: no sliding window
    stride_qb, stride_qh,
    stride_kh, stride_ks,
    stride_vh, stride_vs,
    stride_tb,
    stride_ob, stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    VALUE_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_GROUP: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
    BLOCK_VALUE: tl.constexpr,
):  # fmt: skip
    sequence = tl.program_id(0)
    kv_head = tl.program_id(1)
    groups = tl.arange(0, BLOCK_GROUP)
    dims = tl.arange(0, BLOCK_DIM)
    value_dims = tl.arange(0, BLOCK_VALUE)
    offsets = tl.arange(0, BLOCK_SIZE)
    group_mask = groups < GROUP
    heads = kv_head * GROUP + groups

    query = tl.load(
        query_ptr + sequence * stride_qb + heads[:, None] * stride_qh + dims[None, :],
        mask=group_mask[:, None] & (dims[None, :] < HEAD_DIM),
        other=0.0,
    ).to(tl.float32)
    end = tl.load(ends_ptr + sequence)
    first = tl.where(window > 0, tl.maximum(end - window, 0), 0)

    running_max = tl.full([BLOCK_GROUP], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_GROUP], tl.float32)
    accumulated = tl.zeros([BLOCK_GROUP, BLOCK_VALUE], tl.float32)
    for logical_block in range(first // BLOCK_SIZE, tl.cdiv(end, BLOCK_SIZE)):
        block = tl.load(tables_ptr + sequence * stride_tb + logical_block)
        positions = logical_block * BLOCK_SIZE + offsets
        valid = (positions < end) & (positions >= first)
        slots = block * BLOCK_SIZE + offsets
        keys = tl.load(
            keys_ptr + kv_head * stride_kh + slots[:, None] * stride_ks + dims[None, :],
            mask=valid[:, None] & (dims[None, :] < HEAD_DIM),
            other=0.0,
        ).to(tl.float32)
        scores = tl.sum(query[:, None, :] * keys[None, :, :], axis=2) * scale  # [group, block]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        values = tl.load(
            values_ptr + kv_head * stride_vh + slots[:, None] * stride_vs + value_dims[None, :],
            mask=valid[:, None] & (value_dims[None, :] < VALUE_DIM),
            other=0.0,
        ).to(tl.float32)
        accumulated = accumulated * correction[:, None] + tl.sum(
            weights[:, :, None] * values[None, :, :], axis=1
        )
        running_sum = running_sum * correction + tl.sum(weights, axis=1)
        running_max = new_max

    output = accumulated / running_sum[:, None]
    tl.store(
        output_ptr + sequence * stride_ob + heads[:, None] * stride_oh + value_dims[None, :],
        output.to(output_ptr.dtype.element_ty),
        mask=group_mask[:, None] & (value_dims[None, :] < VALUE_DIM),
    )


def paged_decode_attention(
    query: torch.Tensor,  # [B, heads, head_dim]
    keys: torch.Tensor,  # [kv_heads, slots, head_dim]
    values: torch.Tensor,  # [kv_heads, slots, value_dim]
    block_tables: torch.Tensor,  # [B, W]
    ends: torch.Tensor,  # [B]
    block_size: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Attention of one new token per sequence over its cached context; `[B, heads, value_dim]`."""
    batch, heads, head_dim = query.shape
    kv_heads, _, value_dim = values.shape
    query = query.contiguous()
    output = query.new_empty(batch, heads, value_dim)
    if batch == 0:
        return output
    _paged_decode_kernel[(batch, kv_heads)](
        query, keys, values, block_tables, ends, output,
        scale, sliding_window or 0,
        query.stride(0), query.stride(1),
        keys.stride(0), keys.stride(1),
        values.stride(0), values.stride(1),
        block_tables.stride(0),
        output.stride(0), output.stride(1),
        GROUP=heads // kv_heads,
        HEAD_DIM=head_dim,
        VALUE_DIM=value_dim,
        BLOCK_SIZE=block_size,
        BLOCK_GROUP=triton.next_power_of_2(heads // kv_heads),
        BLOCK_DIM=triton.next_power_of_2(head_dim),
        BLOCK_VALUE=triton.next_power_of_2(value_dim),
    )  # fmt: skip
    return output
