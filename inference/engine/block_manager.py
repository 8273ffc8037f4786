"""KV cache blocks: a fixed pool, handed to sequences as they grow and taken back when they leave.

With prefix caching on, a block whose tokens are all computed is identified by a hash of its
tokens chained with the hash of the blocks before it (so equal hashes mean equal KV: same tokens at
the same positions after the same prefix), seeded with the sequence's cache salt. A sequence being
admitted reuses every leading block whose hash is in the pool and computes only the rest. Blocks are
reference-counted; a block nobody holds any more keeps its content and hash and joins an LRU of
evictable blocks, which are handed out again only when no free block is left, least recently
released first. The pool belongs to one engine and so to one model: its weights and revision never
change under a hash, and what else changes the KV (a LoRA adapter) goes into the cache salt.

A block enters the index only once the step that computed it has run, never while it is being
computed: so a chunk of a step reads no KV that another chunk of the same step writes, and a step
that fails, or whose chunks are run again one by one to find the failing one, leaves nothing behind
in the index that was not computed.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from inference.engine.sequence import Sequence

BlockHash = bytes


def chain_hash(parent: BlockHash, token_ids: list[int]) -> BlockHash:
    """The hash of a full block of `token_ids` following the block (or salt root) hashed `parent`."""
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


def root_hash(cache_salt: str | None) -> BlockHash:
    """The parent hash of a sequence's first block: empty without a salt, so unsalted chains agree."""
    return b"" if cache_salt is None else hashlib.sha256(cache_salt.encode()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # Popping from the end re-uses the most recently freed blocks first, which are warm in cache.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._ref_counts = [0] * num_blocks
        self._hash_of: dict[int, BlockHash] = {}
        self._block_of: dict[BlockHash, int] = {}
        # Blocks held by nobody that still hold a cached prefix, least recently released first.
        self._evictable: OrderedDict[int, None] = OrderedDict()

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def num_available(self) -> int:
        """Blocks a sequence could take now: free ones and evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_available / self.num_blocks

    def ref_count(self, block: int) -> int:
        return self._ref_counts[block]

    def is_cached(self, block: int) -> bool:
        return block in self._hash_of

    def block_hashes(self, seq: Sequence, num_blocks: int) -> list[BlockHash]:
        """Hashes of the first `num_blocks` blocks of `seq` (all full), extending its memo as needed."""
        hashes = seq.block_hashes
        parent = hashes[-1] if hashes else root_hash(seq.cache_salt)
        for index in range(len(hashes), num_blocks):
            start = index * self.block_size
            parent = chain_hash(parent, seq.token_ids[start : start + self.block_size])
            hashes.append(parent)
        return hashes[:num_blocks]

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The pool's blocks holding the longest cached prefix of `seq`, short of its last token:
        that token always goes through the model, for its logits."""
        if not self.enable_prefix_caching:
            return []
        blocks = []
        for block_hash in self.block_hashes(seq, (len(seq.token_ids) - 1) // self.block_size):
            block = self._block_of.get(block_hash)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_admit(self, seq: Sequence, cached: list[int], num_tokens: int) -> bool:
        """Whether `seq`, reusing `cached`, could hold `num_tokens` KV entries with the blocks available."""
        # Reused blocks that nobody holds leave the evictable pool when taken.
        reclaimed = sum(1 for block in cached if self._ref_counts[block] == 0)
        return self.blocks_for(num_tokens) - len(cached) <= self.num_available - reclaimed

    def admit(self, seq: Sequence, cached: list[int]) -> None:
        """Give `seq` the `cached` prefix blocks (from `cached_prefix`): their tokens count as computed."""
        for block in cached:
            if self._ref_counts[block] == 0:
                del self._evictable[block]
            self._ref_counts[block] += 1
        seq.block_table = list(cached)
        seq.num_computed_tokens = len(cached) * self.block_size

    def holds(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether the blocks `seq` already has take `num_tokens` KV entries: nothing to allocate."""
        return num_tokens <= len(seq.block_table) * self.block_size

    def can_hold(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `seq` could grow to `num_tokens` KV entries with the blocks available now."""
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_available

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        missing = self.blocks_for(num_tokens) - len(seq.block_table)
        if missing <= 0:
            return
        if missing > self.num_available:
            raise RuntimeError(f"{seq.request_id}: {missing} KV blocks needed, {self.num_available} left")
        for _ in range(missing):
            block = self._free.pop() if self._free else self._evict()
            self._ref_counts[block] = 1
            seq.block_table.append(block)

    def cache_computed(self, seq: Sequence) -> None:
        """Make the full blocks of `seq` whose KV is computed findable by later sequences."""
        num_full = seq.num_computed_tokens // self.block_size
        if not self.enable_prefix_caching or num_full <= seq.num_cached_blocks:
            return
        hashes = self.block_hashes(seq, num_full)
        for index in range(seq.num_cached_blocks, num_full):
            block, block_hash = seq.block_table[index], hashes[index]
            # A block computed twice (by sequences prefilled together) stays listed under its first copy.
            if block not in self._hash_of and block_hash not in self._block_of:
                self._hash_of[block] = block_hash
                self._block_of[block_hash] = block
        seq.num_cached_blocks = num_full

    def release(self, seq: Sequence) -> None:
        # Last blocks first: a sequence's tail is the part least likely shared, so it is evicted first.
        for block in reversed(seq.block_table):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        seq.block_table = []
        seq.num_cached_blocks = 0

    def _evict(self) -> int:
        block, _ = self._evictable.popitem(last=False)
        del self._block_of[self._hash_of.pop(block)]
        return block
