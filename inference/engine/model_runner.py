"""Runs one engine step through the model: packs the scheduled chunks, returns next-token logits."""

from __future__ import annotations

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

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits `[S, vocab]` (float32) for the chunks that sample, in their order in `chunks`."""
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_row_of: dict[int, int] = {}  # chunk index -> the row whose logits it samples from
        prefills: list[PrefillSpan] = []
        decode_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lengths: list[int] = []
        segments: list[LoraSegment] = []
        # Packed grouped by adapter, so that each adapter's tokens are one contiguous range of rows.
        for index in sorted(range(len(chunks)), key=lambda index: chunks[index].seq.lora_id):
            chunk = chunks[index]
            row = len(token_ids)
            lora_id = chunk.seq.lora_id
            if lora_id != BASE_LORA_ID:
                if segments and segments[-1].lora_id == lora_id:
                    segments[-1] = LoraSegment(lora_id, slice(segments[-1].rows.start, row + chunk.length))
                else:
                    segments.append(LoraSegment(lora_id, slice(row, row + chunk.length)))
            chunk_positions = range(chunk.start, chunk.end)
            token_ids.extend(chunk.seq.token_ids[chunk.start : chunk.end])
            positions.extend(chunk_positions)
            table = chunk.seq.block_table
            slots.extend(
                table[p // self.block_size] * self.block_size + p % self.block_size for p in chunk_positions
            )
            if chunk.length == 1 and chunk.start > 0:
                decode_rows.append(row)
                decode_tables.append(table)
                decode_lengths.append(chunk.end)
            else:
                context = self._context_slots(table, chunk.end) if chunk.start > 0 else None
                prefills.append(PrefillSpan(row, row + chunk.length, chunk.start, context))
            if chunk.samples:
                sample_row_of[index] = row + chunk.length - 1

        decode_blocks = self._padded_block_tables(decode_tables)
        layout = StepLayout(
            slot_mapping=self._tensor(slots),
            prefills=prefills,
            decode_rows=self._tensor(decode_rows),
            decode_blocks=decode_blocks,
            decode_masks=self._decode_masks(decode_blocks.shape[1], decode_lengths),
        )
        # Logits come out in the order of these rows: the order of the chunks, as the caller expects.
        sample_rows = [sample_row_of[index] for index in sorted(sample_row_of)]
        adapters = LoraStep(tuple(segments), len(token_ids)) if segments else None
        with step_context(StepContext(layout=layout, caches=self.caches, observed={})), lora_step(adapters):
            output = self.model(
                input_ids=self._tensor(token_ids).unsqueeze(0),
                position_ids=self._tensor(positions).unsqueeze(0),
                use_cache=False,
                logits_to_keep=self._tensor(sample_rows),
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
