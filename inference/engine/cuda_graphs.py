"""Decode steps replayed from CUDA graphs: the model's kernels launched by one call, not from Python.

A graph is captured per batch-size bucket at start-up, over static input buffers; a decode-only
step of B sequences copies its inputs into the first B rows of those buffers, points the padding
rows at a scratch KV block that no sequence owns, replays the graph of the smallest bucket that
holds B, and reads the first B rows of its logits. Only decode steps whose attention is the paged
kernel are captured (the gather path allocates per step); prefills and mixed steps run eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from inference.engine.attention import (
    DecodeKernel,
    LayerCache,
    StepContext,
    StepLayout,
    Workspace,
    step_context,
)

logger = logging.getLogger(__name__)

# Batch sizes a graph is captured for; a step runs in the smallest that holds it.
_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Warm-up passes before each capture: allocator and autotuning settle outside the graph.
_WARM_UP_PASSES = 2


def buckets_up_to(max_batch: int) -> tuple[int, ...]:
    sizes = tuple(size for size in _BUCKETS if size < max_batch)
    return (*sizes, min(max_batch, _BUCKETS[-1]))


class DecodeGraphs:
    def __init__(
        self,
        model_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        caches: dict[int, LayerCache],
        kernel: DecodeKernel,
        max_batch: int,
        max_blocks: int,
        scratch_block: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        """`model_step(token_ids, positions, sample_rows)` runs the model on the step set by the
        step context and returns its logits; `scratch_block` is a KV block no sequence owns."""
        self.buckets = buckets_up_to(max_batch)
        self.max_batch = self.buckets[-1]
        self.scratch_block = scratch_block
        self.block_size = block_size
        size = self.max_batch

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.long, device=device)

        self.token_ids, self.positions, self.slot_mapping = zeros(size), zeros(size), zeros(size)
        self.decode_blocks, self.decode_ends = zeros(size, max_blocks), zeros(size)
        self.rows = torch.arange(size, device=device)
        self._pad_rows(0, size)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.buckets):  # largest first, so that smaller ones reuse its memory
            self._capture(bucket, model_step, caches, kernel, device, pool)
        self.capture_seconds = time.perf_counter() - start
        logger.info(
            "captured decode CUDA graphs",
            extra={"batch_sizes": list(self.buckets), "seconds": round(self.capture_seconds, 3)},
        )

    def _layout(self, size: int) -> StepLayout:
        return StepLayout(
            slot_mapping=self.slot_mapping[:size],
            prefills=[],
            decode_rows=self.rows[:size],
            decode_blocks=self.decode_blocks[:size],
            decode_ends=self.decode_ends[:size],
            decode_masks={},  # the paged kernel masks by the context ends
        )

    def _capture(
        self,
        size: int,
        model_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        caches: dict[int, LayerCache],
        kernel: DecodeKernel,
        device: torch.device,
        pool: object,
    ) -> None:
        context = StepContext(self._layout(size), caches, {}, Workspace(device), kernel)

        def step() -> torch.Tensor:
            with step_context(context):
                return model_step(self.token_ids[None, :size], self.positions[None, :size], self.rows[:size])

        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(_WARM_UP_PASSES):
                step()
        torch.cuda.current_stream(device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.logits[size] = step()
        self.graphs[size] = graph

    def _pad_rows(self, first: int, last: int) -> None:
        # Padding rows write their key and value to the scratch block and attend to that one slot.
        self.slot_mapping[first:last] = self.scratch_block * self.block_size
        self.decode_blocks[first:last, 0] = self.scratch_block
        self.decode_ends[first:last] = 1

    def replay(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        decode_blocks: torch.Tensor,
        decode_ends: torch.Tensor,
    ) -> torch.Tensor:
        """Logits `[B, vocab]` of a decode-only step of B <= max_batch sequences."""
        batch, width = decode_blocks.shape
        size = next(bucket for bucket in self.buckets if bucket >= batch)
        self.token_ids[:batch].copy_(token_ids)
        self.positions[:batch].copy_(positions)
        self.slot_mapping[:batch].copy_(slot_mapping)
        self.decode_blocks[:batch, :width].copy_(decode_blocks)
        self.decode_ends[:batch].copy_(decode_ends)
        self._pad_rows(batch, size)
        self.graphs[size].replay()
        return self.logits[size][:batch]
