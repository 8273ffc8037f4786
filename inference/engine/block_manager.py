"""KV cache blocks: a fixed pool, handed to sequences as they grow and taken back when they leave."""

from __future__ import annotations

from inference.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Popping from the end re-uses the most recently freed blocks first, which are warm in cache.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def can_hold(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `seq` could grow to `num_tokens` KV entries with the blocks free now."""
        return self.blocks_for(num_tokens) - len(seq.block_table) <= len(self._free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        missing = self.blocks_for(num_tokens) - len(seq.block_table)
        if missing > len(self._free):
            raise RuntimeError(f"{seq.request_id}: {missing} KV blocks needed, {len(self._free)} free")
        for _ in range(missing):
            seq.block_table.append(self._free.pop())

    def release(self, seq: Sequence) -> None:
        self._free.extend(reversed(seq.block_table))
        seq.block_table = []
