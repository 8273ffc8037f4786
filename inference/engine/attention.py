"""Paged attention plugged into Hugging Face models through `transformers.AttentionInterface`.

The model is called on one flat batch `[1, T]` holding every scheduled token of the step, with
each token's own position id. Every attention layer lands here: it writes the step's keys and
values into the paged KV cache, then attends per sequence over that sequence's cached context.
Any architecture that routes attention through the interface (Llama, Qwen2, Mistral, GPT-NeoX, ...)
runs unchanged. The step's layout reaches this function through a context variable, because the
model's forward signature is not ours to extend.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

ATTENTION_NAME = "llm_serving_paged"
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Attention variants some architectures ask for (Gemma 2 soft-capping, attention sinks).
_UNSUPPORTED_OPTIONS = ("softcap", "s_aux", "sinks")


class UnsupportedAttentionError(ValueError):
    """The model asks for an attention variant the paged attention does not compute."""


@dataclass(frozen=True)
class PrefillSpan:
    """Query rows `[row_start, row_end)` of one sequence whose first token sits at `position`."""

    row_start: int
    row_end: int
    position: int
    context_slots: torch.Tensor | None  # KV slots of positions [0, position + rows); None when position == 0


@dataclass(frozen=True)
class StepLayout:
    """Everything the attention layers need about the step, built once per step, not per layer."""

    slot_mapping: torch.Tensor  # [T]: the KV slot each token of the step writes
    prefills: list[PrefillSpan]
    decode_rows: torch.Tensor  # [B]: rows of single-token decodes, batched together
    decode_blocks: torch.Tensor  # [B, W]: each decode's block table, padded to W blocks
    decode_ends: torch.Tensor  # [B]: each decode's context length, its new token included
    # Per sliding window of the model's layers (None: full attention): [1, B, 1, W * block_size],
    # 0 where a decode attends to the padded context position, -inf elsewhere. Empty when a paged
    # kernel attends (it masks by `decode_ends`).
    decode_masks: dict[int | None, torch.Tensor]


@dataclass(frozen=True)
class LayerSpec:
    """What one attention layer caches per token, and the window it attends over."""

    kv_heads: int
    head_dim: int  # of the keys
    value_head_dim: int  # differs from the keys' in multi-head latent attention (DeepSeek V2/V3)
    dtype: torch.dtype
    sliding_window: int | None


KvStore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def index_copy_store(cache_tensor: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """Write `rows` `[kv_heads, T, head_dim]`, in the cache's dtype, at `slots` of the cache, with
    torch's own operations (the CPU's C++ kernels store faster: `cpu_decode.store_kv`)."""
    if cache_tensor.dtype in _FP8_DTYPES:
        # Copied as bytes: the CPU has no float8 index_copy_.
        cache_tensor.view(torch.uint8).index_copy_(1, slots, rows.view(torch.uint8))
    else:
        cache_tensor.index_copy_(1, slots, rows)


@dataclass
class LayerCache:
    # [kv_heads, num_slots, head_dim]: head-major, so that gathered blocks come out as
    # [kv_heads, B, L, head_dim], the layout attention reads, without a transposing copy. Their dtype
    # may be narrower than the model's (`--kv-cache-dtype`): written rounded, read widened.
    keys: torch.Tensor
    values: torch.Tensor
    block_size: int
    store: KvStore = index_copy_store

    def write(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store `[kv_heads, T, head_dim]` keys and values at `slots`, in the cache's dtype."""
        for cache_tensor, new in ((self.keys, keys), (self.values, values)):
            if cache_tensor.dtype in _FP8_DTYPES:
                # Saturated rather than overflowed (e5m2 has infinities).
                limit = torch.finfo(cache_tensor.dtype).max
                new = new.clamp(-limit, limit)
            self.store(cache_tensor, slots, new.to(cache_tensor.dtype))


class Workspace:
    """Scratch buffers that outlive a step, so that the per-layer KV gathers of every decode step
    write into memory already mapped instead of fresh allocations (on CPU, page faults on fresh
    memory cost several times the copy itself). A buffer grows when a step needs more, never shrinks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            # Some headroom, so that contexts growing a block at a time do not reallocate each step.
            buffer = torch.empty(numel + numel // 4, dtype=dtype, device=self.device)
            self._buffers[(name, dtype)] = buffer
        return buffer[:numel].view(shape)


@dataclass
class StepContext:
    layout: StepLayout | None  # None: a plain causal pass over one sequence, nothing cached
    caches: dict[int, LayerCache]
    # Filled by a pass without layout: what each layer would store, to size the cache.
    observed: dict[int, LayerSpec]
    workspace: Workspace
    # A kernel reading K/V straight from the block pool (inference.engine.paged_decode); None: the
    # decodes attend over blocks gathered into the workspace.
    decode_kernel: DecodeKernel | None = None


DecodeKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float, int | None],
    torch.Tensor,
]

_current_step: ContextVar[StepContext | None] = ContextVar("llm_serving_step", default=None)


@contextlib.contextmanager
def step_context(context: StepContext) -> Iterator[None]:
    token = _current_step.set(context)
    try:
        yield
    finally:
        _current_step.reset(token)


def _window_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Causal mask, narrowed to a sliding window when the layer has one (True means attend)."""
    allowed = key_positions[None, :] <= query_positions[:, None]
    if window is not None:
        allowed &= key_positions[None, :] > query_positions[:, None] - window
    return allowed


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=True
    )


def _gather_blocks(
    cache_tensor: torch.Tensor, blocks: torch.Tensor, block_size: int, out: torch.Tensor
) -> torch.Tensor:
    """[kv_heads, B, W * block_size, head_dim] from a [B, W] block table, written into `out`.

    Whole blocks are copied, not single slots: one index per block instead of one per token.
    """
    kv_heads, _, head_dim = cache_tensor.shape
    by_block = cache_tensor.view(kv_heads, -1, block_size * head_dim)
    torch.index_select(by_block, 1, blocks.flatten(), out=out.view(kv_heads, -1, block_size * head_dim))
    return out


def decode_masks(
    ends: torch.Tensor, width: int, block_size: int, windows: set[int | None], dtype: torch.dtype
) -> dict[int | None, torch.Tensor]:
    """Per sliding window (None: full attention), the additive attention bias of each decode's context
    `[1, B, 1, width * block_size]`, for attention over its gathered blocks padded to `width` blocks.

    Additive (0 or -inf) rather than boolean: attention would convert a boolean mask in every layer.
    """
    key_positions = torch.arange(width * block_size, device=ends.device)
    causal = key_positions < ends[:, None]
    masks = {}
    for window in windows:
        allowed = causal if window is None else causal & (key_positions >= ends[:, None] - window)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=ends.device)
        masks[window] = bias.masked_fill_(~allowed, float("-inf"))[None, :, None, :]
    return masks


def decode_attention(
    query: torch.Tensor,  # [heads, B, head_dim]: one new token per sequence
    cache: LayerCache,
    layout: StepLayout,
    scaling: float,
    sliding_window: int | None,
    workspace: Workspace,
    kernel: DecodeKernel | None,
) -> torch.Tensor:
    if kernel is not None:
        return kernel(
            query.transpose(0, 1), cache.keys, cache.values, layout.decode_blocks, layout.decode_ends,
            cache.block_size, scaling, sliding_window,
        )  # fmt: skip
    heads, batch, _ = query.shape
    kv_heads = cache.keys.shape[0]
    context = layout.decode_blocks.shape[1] * cache.block_size

    def gathered(name: str, cache_tensor: torch.Tensor) -> torch.Tensor:
        out = workspace.take(name, (kv_heads, batch, context, cache_tensor.shape[2]), cache_tensor.dtype)
        return _gather_blocks(cache_tensor, layout.decode_blocks, cache.block_size, out)

    # Widened from a narrower cache dtype, for SDPA.
    keys = gathered("keys", cache.keys).to(query.dtype)
    values = gathered("values", cache.values).to(query.dtype)
    head_dim = query.shape[2]
    # The query heads sharing a KV head become that head's query rows: GQA without copying KV.
    grouped_query = query.reshape(kv_heads, heads // kv_heads, batch, head_dim).transpose(1, 2)
    attended = F.scaled_dot_product_attention(
        grouped_query, keys, values, attn_mask=layout.decode_masks[sliding_window], scale=scaling
    )  # [kv_heads, B, group, head_dim]
    return attended.permute(1, 0, 2, 3).reshape(batch, heads, values.shape[3])


def paged_attention(
    module: nn.Module,
    query: torch.Tensor,  # [1, heads, T, head_dim]
    key: torch.Tensor,  # [1, kv_heads, T, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    context = _current_step.get()
    if context is None:
        raise RuntimeError("the paged attention ran outside an engine step")
    unsupported = sorted(name for name in _UNSUPPORTED_OPTIONS if kwargs.get(name) is not None)
    if unsupported:
        # Ignoring them would silently change the model's outputs.
        raise UnsupportedAttentionError(
            f"the model's attention uses {', '.join(unsupported)}, which the paged attention does not compute"
        )
    layer = module.layer_idx
    if context.layout is None:
        context.observed[layer] = LayerSpec(
            key.shape[1], key.shape[3], value.shape[3], key.dtype, sliding_window
        )
        positions = torch.arange(query.shape[2], device=query.device)
        mask = _window_mask(positions, positions, sliding_window)
        return _attend(query, key, value, scaling, mask, False).transpose(1, 2), None

    layout, cache = context.layout, context.caches[layer]
    cache.write(layout.slot_mapping, key[0], value[0])
    if not layout.prefills:
        # A step of decodes only (the steady state): every row is one, in order.
        attended = decode_attention(
            query[0], cache, layout, scaling, sliding_window, context.workspace, context.decode_kernel
        )
        return attended.unsqueeze(0), None

    output = query.new_empty(query.shape[2], query.shape[1], value.shape[3])  # [T, heads, value_head_dim]
    for span in layout.prefills:
        rows = slice(span.row_start, span.row_end)
        span_query = query[:, :, rows]
        if span.context_slots is None and sliding_window is None:
            attended = _attend(span_query, key[:, :, rows], value[:, :, rows], scaling, None, True)
        else:
            slots = span.context_slots if span.context_slots is not None else layout.slot_mapping[rows]
            span_keys = cache.keys.index_select(1, slots).to(query.dtype)[None]
            span_values = cache.values.index_select(1, slots).to(query.dtype)[None]
            query_positions = torch.arange(
                span.position, span.position + span_query.shape[2], device=query.device
            )
            key_positions = torch.arange(slots.shape[0], device=query.device)
            mask = _window_mask(query_positions, key_positions, sliding_window)
            attended = _attend(span_query, span_keys, span_values, scaling, mask, False)
        output[rows] = attended[0].transpose(0, 1)

    if layout.decode_rows.numel():
        output[layout.decode_rows] = decode_attention(
            query[0, :, layout.decode_rows], cache, layout, scaling, sliding_window, context.workspace,
            context.decode_kernel,
        )  # fmt: skip
    return output.unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, paged_attention)
