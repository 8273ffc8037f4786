"""Runs one engine step through the model: packs the scheduled chunks, returns next-token logits.

`prepare` turns the step's chunks into tensors (token ids, positions, the attention layout) with a
few vectorised ops, never a Python loop over tokens; `forward` runs the model on them. `run` is
both. The split lets the host time of a step be measured apart from the model's, and lets a caller
prepare the next step while the device still runs this one.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
from collections.abc import Sequence as Rows
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
import torch
from transformers import PreTrainedModel

from inference.engine import cpu_decode
from inference.engine.architectures import check_attention_layers
from inference.engine.attention import (
    ATTENTION_NAME,
    DecodeKernel,
    LayerCache,
    LayerSpec,
    PrefillSpan,
    StepContext,
    StepLayout,
    Workspace,
    decode_masks,
    index_copy_store,
    step_context,
)
from inference.engine.cuda_graphs import DecodeGraphs
from inference.engine.fused_layers import fuse_layers
from inference.engine.packed_linear import pack_linear_layers
from inference.engine.scheduler import Chunk
from inference.engine.sequence import Sequence
from inference.lora import BASE_LORA_ID, LoraSegment, LoraStep, lora_step

logger = logging.getLogger(__name__)

_START, _LENGTH, _SAMPLES = attrgetter("start"), attrgetter("length"), attrgetter("samples")
# A short pass at start-up both warms the kernels and reveals what each layer caches per token.
_PROBE_TOKENS = 8
# `--kv-cache-dtype` values other than auto (the dtype attention computes in).
KV_CACHE_DTYPES = {
    "bfloat16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class StepInputs:
    """One step as host arrays, built from the scheduled chunks once (picklable, so that rank 0 of a
    tensor-parallel group can broadcast it and every rank runs the same step)."""

    token_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    slot_mapping: np.ndarray  # [T]: the KV slot each token writes
    sample_rows: np.ndarray  # [S]: rows whose logits are sampled
    # Per prefill: its rows [first, last), its first position, and the KV slots of its context
    # (None when it starts at position 0).
    prefills: list[tuple[int, int, int, np.ndarray | None]]
    decode_rows: np.ndarray  # [B]
    decode_blocks: np.ndarray  # [B, W]: block tables padded with block 0
    decode_ends: np.ndarray  # [B]: context length of each decode, its new token included
    # Per run of consecutive chunks for one LoRA adapter: its id and rows [first, last).
    lora_segments: tuple[tuple[int, int, int], ...] = ()


class ModelRunner:
    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        block_size: int,
        attention_backend: str = "auto",
        kv_cache_dtype: str = "auto",
    ) -> None:
        self.model = model
        self.device = device
        self.block_size = block_size
        self.decode_kernel = pick_decode_kernel(attention_backend, device, block_size)
        # With the CPU's decode kernel come its other kernels: KV stores, norms and MLPs (and the argmax).
        self.cpu_kernels = self.decode_kernel is cpu_decode.paged_decode_attention
        pack_linear_layers(model)
        if self.cpu_kernels:
            fuse_layers(model, model.dtype)
        model.set_attn_implementation(ATTENTION_NAME)
        self.layer_specs = self._probe()
        self.sliding_windows = {spec.sliding_window for spec in self.layer_specs.values()}
        self.attention_dtype = next(iter(self.layer_specs.values())).dtype
        # What the KV cache stores.
        self.cache_dtype = KV_CACHE_DTYPES.get(kv_cache_dtype, self.attention_dtype)
        self.caches: dict[int, LayerCache] = {}
        self.scratch_block = 0
        self.graphs: DecodeGraphs | None = None
        self.workspace = Workspace(device)
        self.uploader = _Uploader(device)
        self._decode_run: _DecodeRun | None = None

    @property
    def kv_bytes_per_token(self) -> int:
        specs = self.layer_specs.values()
        itemsize = self.cache_dtype.itemsize
        return sum(spec.kv_heads * (spec.head_dim + spec.value_head_dim) * itemsize for spec in specs)

    def allocate_cache(self, num_blocks: int) -> None:
        # One block more than the block manager hands out: a scratch block that the padding rows of a
        # graph-replayed step write to.
        slots = (num_blocks + 1) * self.block_size
        self.scratch_block = num_blocks

        def zeros(spec: LayerSpec, head_dim: int) -> torch.Tensor:
            return torch.zeros(spec.kv_heads, slots, head_dim, dtype=self.cache_dtype, device=self.device)

        store = cpu_decode.store_kv if self.cpu_kernels else index_copy_store
        self.caches = {
            layer: LayerCache(
                zeros(spec, spec.head_dim), zeros(spec, spec.value_head_dim), self.block_size, store
            )
            for layer, spec in self.layer_specs.items()
        }

    @torch.inference_mode()
    def capture_decode_graphs(self, max_batch: int, max_model_len: int) -> None:
        """Capture CUDA graphs of decode steps (on CUDA, with the paged kernel; else a no-op)."""
        if self.device.type != "cuda" or self.decode_kernel is None:
            return
        max_blocks = -(-max_model_len // self.block_size)
        self.graphs = DecodeGraphs(
            self._model_step, self.caches, self.decode_kernel, max_batch, max_blocks, self.scratch_block,
            self.block_size, self.device,
        )  # fmt: skip

    def _model_step(
        self, token_ids: torch.Tensor, positions: torch.Tensor, sample_rows: torch.Tensor
    ) -> torch.Tensor:
        output = self.model(
            input_ids=token_ids, position_ids=positions, use_cache=False, logits_to_keep=sample_rows
        )
        return output.logits[0]

    @torch.inference_mode()
    def _probe(self) -> dict[int, LayerSpec]:
        context = StepContext(layout=None, caches={}, observed={}, workspace=Workspace(self.device))
        tokens = torch.zeros(1, _PROBE_TOKENS, dtype=torch.long, device=self.device)
        with step_context(context):
            self.model(input_ids=tokens, use_cache=False, logits_to_keep=1)
        check_attention_layers(self.model.config, set(context.observed))
        return context.observed

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits `[S, vocab]` (in the model's dtype) for the chunks that sample, in their order in
        `chunks`."""
        return self.forward(self.prepare(chunks))

    def prepare(self, chunks: list[Chunk]) -> StepInputs:
        """The step's index arrays: from the step before's when the step continues its decodes
        (`_DecodeRun`), else from its chunks alone (`_HostStep`)."""
        run = self._decode_run.next_step(chunks) if self._decode_run is not None else None
        if run is not None:
            self._decode_run = run
            return run.inputs(chunks)
        host = _HostStep(chunks, self.block_size)
        self._decode_run = _DecodeRun.after(host)
        return host.inputs(chunks)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Run one step from its prepared inputs; returns the logits of its sampled rows."""
        contexts = [context for *_, context in inputs.prefills if context is not None]
        uploaded = self.uploader.upload(
            [
                inputs.token_ids,
                inputs.positions,
                inputs.slot_mapping,
                inputs.sample_rows,
                inputs.decode_rows,
                inputs.decode_blocks,
                inputs.decode_ends,
                *contexts,
            ]
        )
        token_ids, positions, slot_mapping, sample_rows, decode_rows, decode_blocks, ends = uploaded[:7]
        if self.graphs is not None and _replayable(inputs, self.graphs.max_batch):
            return self.graphs.replay(token_ids, positions, slot_mapping, decode_blocks, ends)
        context_slots = iter(uploaded[7:])
        prefills = [
            PrefillSpan(first, last, position, None if context is None else next(context_slots))
            for first, last, position, context in inputs.prefills
        ]
        masks = {}  # a paged kernel masks by the context ends itself
        if self.decode_kernel is None:
            width = decode_blocks.shape[1]
            masks = decode_masks(ends, width, self.block_size, self.sliding_windows, self.attention_dtype)
        layout = StepLayout(
            slot_mapping=slot_mapping,
            prefills=prefills,
            decode_rows=decode_rows,
            decode_blocks=decode_blocks,
            decode_ends=ends,
            decode_masks=masks,
        )
        segments = tuple(
            LoraSegment(lora_id, slice(first, last)) for lora_id, first, last in inputs.lora_segments
        )
        adapters = LoraStep(segments, len(inputs.token_ids)) if segments else None
        context = StepContext(layout, self.caches, {}, self.workspace, self.decode_kernel)
        with step_context(context), lora_step(adapters):
            return self._model_step(token_ids[None], positions[None], sample_rows)


def _replayable(inputs: StepInputs, max_batch: int) -> bool:
    """Whether a captured decode graph can run the step: decodes only, each sampling (a one-token
    piece of a chunked prompt looks like a decode but does not), no adapters, within the buckets."""
    decodes = len(inputs.decode_rows)
    return (
        not inputs.prefills
        and not inputs.lora_segments
        and len(inputs.sample_rows) == decodes
        and decodes <= max_batch
    )


def pick_decode_kernel(backend: str, device: torch.device, block_size: int) -> DecodeKernel | None:
    """The paged decode kernel for `attention_backend`, or None for attention over gathered blocks."""
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        return _triton_kernel(backend, device, block_size)
    if backend == "compiled" or (backend == "auto" and device.type == "cpu"):
        return _cpu_kernel(backend, device)
    return None


def _triton_kernel(backend: str, device: torch.device, block_size: int) -> DecodeKernel | None:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    usable = importlib.util.find_spec("triton") is not None and (device.type == "cuda" or interpreted)
    power_of_two = block_size & (block_size - 1) == 0
    if not (usable and power_of_two):
        if backend == "auto":
            return None
        raise ValueError(
            "attention_backend=triton needs triton (the gpu extra), a CUDA device and a power-of-two "
            f"kv_cache_block_size (got device {device.type}, block size {block_size})"
        )
    from inference.engine.paged_decode import paged_decode_attention

    return paged_decode_attention


def _cpu_kernel(backend: str, device: torch.device) -> DecodeKernel | None:
    """The C++ kernel, built now (or loaded from the build cache). Where it cannot be built, `auto`
    falls back to attention over gathered blocks, with a warning saying why."""
    try:
        if device.type != "cpu":
            raise cpu_decode.KernelBuildError(f"it runs on the CPU, not on {device.type}")
        cpu_decode.load()
    except cpu_decode.KernelBuildError as error:
        if backend == "auto":
            logger.warning("no CPU decode kernel (%s): decodes attend over gathered blocks", error)
            return None
        raise ValueError(f"attention_backend=compiled is unavailable: {error}") from error
    return cpu_decode.paged_decode_attention


def _lora_segments(
    chunks: list[Chunk], row_starts: Rows[int], lengths: Rows[int]
) -> tuple[tuple[int, int, int], ...]:
    """Runs of rows for one adapter each (the engine orders chunks by adapter, so one per adapter);
    rows of the base model need none."""
    segments: list[tuple[int, int, int]] = []
    for index, chunk in enumerate(chunks):
        lora_id = chunk.seq.lora_id
        if lora_id == BASE_LORA_ID:
            continue
        first, last = int(row_starts[index]), int(row_starts[index] + lengths[index])
        if segments and segments[-1][0] == lora_id and segments[-1][2] == first:
            segments[-1] = (lora_id, segments[-1][1], last)
        else:
            segments.append((lora_id, first, last))
    return tuple(segments)


class _HostStep:
    """The step's index arrays, computed on the host by whole-step numpy ops (a few microseconds each,
    where a small torch op costs several times that). The only Python loops run over chunks, never
    tokens."""

    def __init__(self, chunks: list[Chunk], block_size: int) -> None:
        self.block_size = block_size
        count = len(chunks)
        self.starts = np.fromiter(map(_START, chunks), np.int64, count)
        self.lengths = np.fromiter(map(_LENGTH, chunks), np.int64, count)
        self.ends = self.starts + self.lengths
        self.row_starts = np.cumsum(self.lengths) - self.lengths
        samples = np.fromiter(map(_SAMPLES, chunks), bool, count)
        self.sample_rows = (self.row_starts + self.lengths - 1)[samples]
        num_tokens = int(self.lengths.sum())
        token_slices = (chunk.seq.token_ids[chunk.start : chunk.end] for chunk in chunks)
        self.token_ids = np.fromiter(itertools.chain.from_iterable(token_slices), np.int64, num_tokens)

        self.seqs = [chunk.seq for chunk in chunks]
        self.block_tables = [seq.block_table for seq in self.seqs]
        self.table_lengths = np.fromiter(map(len, self.block_tables), np.int64, count)
        # Padding points at block 0; masks keep those entries out of every softmax.
        self.tables = np.zeros((count, int(self.table_lengths.max())), dtype=np.int64)
        in_table = np.arange(self.tables.shape[1]) < self.table_lengths[:, None]
        self.tables[in_table] = np.fromiter(itertools.chain.from_iterable(self.block_tables), np.int64)

        chunk_of_row = np.repeat(np.arange(count), self.lengths)
        self.positions = np.arange(num_tokens) - self.row_starts[chunk_of_row] + self.starts[chunk_of_row]
        blocks = self.tables[chunk_of_row, self.positions // block_size]
        self.slot_mapping = blocks * block_size + self.positions % block_size

    def inputs(self, chunks: list[Chunk]) -> StepInputs:
        is_decode = (self.lengths == 1) & (self.starts > 0)
        decode_ends = self.ends[is_decode]
        decode_width = -(-int(decode_ends.max()) // self.block_size) if len(decode_ends) else 0
        prefills = [
            (
                int(self.row_starts[index]),
                int(self.row_starts[index] + self.lengths[index]),
                int(self.starts[index]),
                self.context_slots(index) if self.starts[index] > 0 else None,
            )
            for index in np.flatnonzero(~is_decode).tolist()
        ]
        return StepInputs(
            token_ids=self.token_ids,
            positions=self.positions,
            slot_mapping=self.slot_mapping,
            sample_rows=self.sample_rows,
            prefills=prefills,
            decode_rows=self.row_starts[is_decode],
            decode_blocks=self.tables[is_decode, :decode_width],
            decode_ends=decode_ends,
            lora_segments=_lora_segments(chunks, self.row_starts, self.lengths),
        )

    def context_slots(self, chunk: int) -> np.ndarray:
        """The KV slots of positions `[0, end)` of a chunk that continues a prefilled prompt."""
        end = int(self.ends[chunk])
        blocks = self.tables[chunk, : -(-end // self.block_size)]
        return (blocks[:, None] * self.block_size + np.arange(self.block_size)).reshape(-1)[:end]


@dataclass(frozen=True)
class _DecodeRun:
    """What a step must know of the step before to be built from it, when it decodes the next token of
    each of that step's sequences in the same order, as most steps of a busy server do.

    Such a step is built with a Python pass over its sequences and a few conversions to arrays. Each
    numpy operation comes with a cost of its own after a forward pass, which evicts numpy's code and
    data from the CPU's caches: building the step with whole-step numpy ops, as `_HostStep` does,
    took several times as long there as when warm.
    """

    # Held, not copied: identity says whether a chunk continues the run, and holding the objects keeps
    # a new sequence or table from taking a finished one's identity.
    seqs: list[Sequence]
    block_tables: list[list[int]]  # the sequences' own lists: a running sequence's table only grows
    table_lengths: list[int]
    ends: list[int]  # each sequence's computed tokens after the step
    tables: np.ndarray  # [B, W]: the block tables padded with block 0 (never written once built)
    block_size: int

    @classmethod
    def after(cls, host: _HostStep) -> _DecodeRun:
        return cls(
            host.seqs, host.block_tables, host.table_lengths.tolist(), host.ends.tolist(), host.tables,
            host.block_size,
        )  # fmt: skip

    def next_step(self, chunks: list[Chunk]) -> _DecodeRun | None:
        """The run one step on, if `chunks` continue it; else None. A sequence preempted or admitted
        since has a new block table list, and its chunk starts elsewhere."""
        if len(chunks) != len(self.seqs):
            return None
        for chunk, seq, table, end in zip(chunks, self.seqs, self.block_tables, self.ends, strict=True):
            continues = chunk.seq is seq and seq.block_table is table and chunk.start == end
            # One token that samples: a decode (a one-token piece of a prompt does not sample).
            if not (continues and chunk.length == 1 and chunk.samples):
                return None
        table_lengths = [len(table) for table in self.block_tables]
        tables = self.tables
        if table_lengths != self.table_lengths:
            tables = np.zeros((len(chunks), max(table_lengths)), dtype=np.int64)
            tables[:, : self.tables.shape[1]] = self.tables
            for row, (known, length) in enumerate(zip(self.table_lengths, table_lengths, strict=True)):
                if length != known:
                    tables[row, known:length] = self.block_tables[row][known:]
        ends = [end + 1 for end in self.ends]
        return _DecodeRun(self.seqs, self.block_tables, table_lengths, ends, tables, self.block_size)

    def inputs(self, chunks: list[Chunk]) -> StepInputs:
        """The inputs of the step that brought the run here."""
        size = self.block_size
        positions = [end - 1 for end in self.ends]
        slots = [table[position // size] * size + position % size
                 for table, position in zip(self.block_tables, positions, strict=True)]  # fmt: skip
        rows = np.arange(len(chunks))
        return StepInputs(
            token_ids=np.array([seq.token_ids[-1] for seq in self.seqs], dtype=np.int64),
            positions=np.array(positions, dtype=np.int64),
            slot_mapping=np.array(slots, dtype=np.int64),
            sample_rows=rows,
            prefills=[],
            decode_rows=rows,
            decode_blocks=self.tables[:, : -(-max(self.ends) // size)],
            decode_ends=np.array(self.ends, dtype=np.int64),
            lora_segments=_lora_segments(chunks, range(len(chunks)), [1] * len(chunks)),
        )


class _Uploader:
    """Host index arrays to device tensors: one copy per step, through pinned memory on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # Two staging buffers used in turn: a step's upload may still be in flight while the next
        # step is prepared.
        self._staging = [torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)]
        self._turn = 0

    def upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        if self.device.type == "cpu":
            return [torch.from_numpy(array) for array in arrays]
        sizes = [array.size for array in arrays]
        packed = self._staging_buffer(sum(sizes))
        packed.numpy()[:] = np.concatenate([array.reshape(-1) for array in arrays])
        on_device = packed.to(self.device, non_blocking=True)
        pieces = torch.split(on_device, sizes)
        return [piece.view(array.shape) for piece, array in zip(pieces, arrays, strict=True)]

    def _staging_buffer(self, size: int) -> torch.Tensor:
        self._turn = 1 - self._turn
        if self._staging[self._turn].numel() < size:
            self._staging[self._turn] = torch.empty(size * 2, dtype=torch.int64).pin_memory()
        return self._staging[self._turn][:size]
