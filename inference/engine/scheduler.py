"""Which sequences run in the next forward pass, and how many of their tokens.

Every step gives each running sequence (oldest first) the tokens it still lacks KV entries for:
one for a decode, a whole or partial prompt for a prefill. Then it admits waiting requests while
the token budget, the sequence limit and the KV blocks allow; a request admitted with a cached
prefix (see `BlockManager`) computes, and so spends budget and needs new blocks for, only the rest.
When a running sequence cannot grow, the newest running sequence is preempted: its blocks are
released and it goes back to the front of the queue, to be recomputed later from its tokens, less
whatever of its blocks is still cached by then. Nothing fails for lack of memory.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from inference.engine.block_manager import BlockManager
from inference.engine.sequence import Sequence, SequenceStatus


class Chunk(NamedTuple):
    """Tokens `[start, start + length)` of `seq` go through the model this step. (A named tuple, as
    the other per-token records of a step: made several times faster than a frozen dataclass.)"""

    seq: Sequence
    start: int
    length: int
    # The chunk reaches the last known token, so the step yields the sequence's next token.
    samples: bool

    @property
    def end(self) -> int:
        return self.start + self.length


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Take `seq` out of the engine and free its KV blocks, wherever it is."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> list[Chunk]:
        budget = self.max_num_batched_tokens
        chunks: list[Chunk] = []
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            start = seq.num_computed_tokens
            end = start + min(len(seq.token_ids) - start, budget)
            # Most steps' decodes fit in the blocks they hold: no block accounting for those.
            if not self.blocks.holds(seq, end):
                if not self._make_room(seq, end):
                    continue  # `seq` itself was preempted
                self.blocks.grow(seq, end)
            chunks.append(self._take(seq, start, end))
            budget -= end - start
            index += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = self.blocks.cached_prefix(seq)
            num_cached_tokens = len(cached) * self.blocks.block_size
            length = min(len(seq.token_ids) - num_cached_tokens, budget)
            if not self.blocks.can_admit(seq, cached, num_cached_tokens + length):
                break
            self.waiting.popleft()
            self.blocks.admit(seq, cached)
            if seq.num_cached_tokens is None:
                seq.num_cached_tokens = num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            start = seq.num_computed_tokens
            self.blocks.grow(seq, start + length)
            chunks.append(self._take(seq, start, start + length))
            budget -= length
        return chunks

    def _take(self, seq: Sequence, start: int, end: int) -> Chunk:
        """Tokens `[start, end)` of `seq`, which holds the blocks for them, run in this step."""
        # Counted as computed now: the forward pass that fills them runs before the next schedule.
        seq.num_computed_tokens = end
        return Chunk(seq, start, end - start, end == len(seq.token_ids))

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Preempt the newest running sequences until `seq` fits; False if `seq` itself had to go."""
        while not self.blocks.can_hold(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
