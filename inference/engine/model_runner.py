"""Runs one engine step through the model: packs the scheduled chunks, returns next-token logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from inference.engine.attention import (
    ATTENTION_NAME,
    LayerCache,
    LayerSpec,
    PrefillSpan,
    StepContext,
    StepLayout,
    step_context,
)
from inference.engine.scheduler import Chunk
from inference.lora import BASE_LORA_ID, LoraSegment, LoraStep, lora_step

# A short pass at start-up both warms the kernels and reveals what each layer caches per token.
_PROBE_TOKENS = 8


@dataclass
class StepInputs:
    """One step in plain numbers, built from the scheduled chunks once (picklable, so that rank 0 of a
    tensor-parallel group can broadcast it and every rank runs the same step)."""

    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # the KV slot each token writes
    # Per prefill: its rows [first, last), its first and end positions, and the block table of its
    # context (None when it starts at position 0).
    prefills: list[tuple[int, int, int, int, list[int] | None]] = field(default_factory=list)
    decode_rows: list[int] = field(default_factory=list)
    decode_tables: list[list[int]] = field(default_factory=list)
    decode_lengths: list[int] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)  # in the order of the chunks
    # Rows are packed grouped by LoRA adapter: per adapter in the step, its id and rows [first, last).
    lora_segments: list[tuple[int, int, int]] = field(default_factory=list)


class ModelRunner:
    def __init__(self, model: PreTrainedModel, device: torch.device, block_size: int) -> None:
        self.model = model
        self.device = device
        self.block_size = block_size
        model.set_attn_implementation(ATTENTION_NAME)
        self.layer_specs = self._probe()
        self.sliding_windows = {spec.sliding_window for spec in self.layer_specs.values()}
        self.kv_dtype = next(iter(self.layer_specs.values())).dtype
        self.caches: dict[int, LayerCache] = {}

    @property
    def kv_bytes_per_token(self) -> int:
        specs = self.layer_specs.values()
        return sum(2 * spec.kv_heads * spec.head_dim * spec.dtype.itemsize for spec in specs)

    def allocate_cache(self, num_blocks: int) -> None:
        slots = num_blocks * self.block_size
        self.caches = {
            layer: LayerCache(
                keys=torch.zeros(spec.kv_heads, slots, spec.head_dim, dtype=spec.dtype, device=self.device),
                values=torch.zeros(spec.kv_heads, slots, spec.head_dim, dtype=spec.dtype, device=self.device),
                block_size=self.block_size,
            )
            for layer, spec in self.layer_specs.items()
        }

    @torch.inference_mode()
    def _probe(self) -> dict[int, LayerSpec]:
        context = StepContext(layout=None, caches={}, observed={})
        tokens = torch.zeros(1, _PROBE_TOKENS, dtype=torch.long, device=self.device)
        with step_context(context):
            self.model(input_ids=tokens, use_cache=False, logits_to_keep=1)
        if not context.observed:
            raise RuntimeError(
                f"{type(self.model).__name__} does not route attention through AttentionInterface"
            )
        return context.observed

    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits `[S, vocab]` (float32) for the chunks that sample, in their order in `chunks`."""
        return self.forward(self.prepare(chunks))

    def prepare(self, chunks: list[Chunk]) -> StepInputs:
        """The step's inputs as plain numbers: what another rank needs to run the same step."""
        inputs = StepInputs()
        sample_row_of: dict[int, int] = {}  # chunk index -> the row whose logits it samples from
        # Grouped by adapter, so that each adapter's tokens are one contiguous range of rows.
        for index in sorted(range(len(chunks)), key=lambda index: chunks[index].seq.lora_id):
            chunk = chunks[index]
            row = len(inputs.token_ids)
            _extend_segments(inputs.lora_segments, chunk.seq.lora_id, row, row + chunk.length)
            chunk_positions = range(chunk.start, chunk.end)
            inputs.token_ids.extend(chunk.seq.token_ids[chunk.start : chunk.end])
            inputs.positions.extend(chunk_positions)
            table = chunk.seq.block_table
            inputs.slots.extend(
                table[p // self.block_size] * self.block_size + p % self.block_size for p in chunk_positions
            )
            if chunk.length == 1 and chunk.start > 0:
                inputs.decode_rows.append(row)
                inputs.decode_tables.append(table)
                inputs.decode_lengths.append(chunk.end)
            else:
                context = table[: -(-chunk.end // self.block_size)] if chunk.start > 0 else None
                inputs.prefills.append((row, row + chunk.length, chunk.start, chunk.end, context))
            if chunk.samples:
                sample_row_of[index] = row + chunk.length - 1
        # Logits come out in the order of these rows: the chunks' order, which the caller expects.
        inputs.sample_rows = [sample_row_of[index] for index in sorted(sample_row_of)]
        return inputs

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Run one step from its prepared inputs; returns the logits of its sampled rows."""
        prefills = [
            PrefillSpan(first, last, position, None if table is None else self._context_slots(table, end))
            for first, last, position, end, table in inputs.prefills
        ]
        decode_blocks = self._padded_block_tables(inputs.decode_tables)
        layout = StepLayout(
            slot_mapping=self._tensor(inputs.slots),
            prefills=prefills,
            decode_rows=self._tensor(inputs.decode_rows),
            decode_blocks=decode_blocks,
            decode_masks=self._decode_masks(decode_blocks.shape[1], inputs.decode_lengths),
        )
        segments = tuple(
            LoraSegment(lora_id, slice(first, last)) for lora_id, first, last in inputs.lora_segments
        )
        adapters = LoraStep(segments, len(inputs.token_ids)) if segments else None
        with step_context(StepContext(layout=layout, caches=self.caches, observed={})), lora_step(adapters):
            output = self.model(
                input_ids=self._tensor(inputs.token_ids).unsqueeze(0),
                position_ids=self._tensor(inputs.positions).unsqueeze(0),
                use_cache=False,
                logits_to_keep=self._tensor(inputs.sample_rows),
            )
        return output.logits[0].float()

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _context_slots(self, table: list[int], length: int) -> torch.Tensor:
        blocks = self._tensor(table[: -(-length // self.block_size)])
        offsets = torch.arange(self.block_size, device=self.device)
        return (blocks[:, None] * self.block_size + offsets).flatten()[:length]

    def _padded_block_tables(self, tables: list[list[int]]) -> torch.Tensor:
        # Padding points at block 0; the decode masks keep those entries out of the softmax.
        width = max((len(table) for table in tables), default=0)
        return self._tensor([table + [0] * (width - len(table)) for table in tables]).view(len(tables), width)

    def _decode_masks(self, width: int, lengths: list[int]) -> dict[int | None, torch.Tensor]:
        """Per sliding window in the model, the additive attention bias of each decode's context,
        padded to `width` blocks.

        Additive (0 or -inf) rather than boolean: attention would convert a boolean mask in every layer.
        """
        key_positions = torch.arange(width * self.block_size, device=self.device)
        ends = self._tensor(lengths)[:, None]
        causal = key_positions < ends
        masks = {}
        for window in self.sliding_windows:
            allowed = causal if window is None else causal & (key_positions >= ends - window)
            bias = torch.zeros(allowed.shape, dtype=self.kv_dtype, device=self.device).masked_fill_(
                ~allowed, float("-inf")
            )
            masks[window] = bias[None, :, None, :]  # [1, B, 1, L]: broadcast over KV heads and groups
        return masks


def _extend_segments(segments: list[tuple[int, int, int]], lora_id: int, first: int, last: int) -> None:
    """Add rows [first, last) of adapter `lora_id` (packed in adapter order); base rows need none."""
    if lora_id == BASE_LORA_ID:
        return
    if segments and segments[-1][0] == lora_id:
        segments[-1] = (lora_id, segments[-1][1], last)
    else:
        segments.append((lora_id, first, last))
