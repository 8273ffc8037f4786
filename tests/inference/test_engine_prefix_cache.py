"""The block manager's prefix cache: chained block hashes, reference counts, LRU eviction, and the
scheduler's accounting of cached tokens (budget, admission, preemption)."""

from __future__ import annotations

from inference.engine.block_manager import BlockManager, chain_hash, root_hash
from inference.engine.request import SamplingParams
from inference.engine.scheduler import Chunk, Scheduler
from inference.engine.sequence import Sequence

BLOCK_SIZE = 4


def _sequence(request_id: str, token_ids: list[int], cache_salt: str | None = None) -> Sequence:
    return Sequence(
        request_id, list(token_ids), SamplingParams(max_tokens=8), arrival_time=0.0, cache_salt=cache_salt
    )


def _computed(blocks: BlockManager, seq: Sequence) -> None:
    """What the engine does for `seq` once its step ran: admit it, give it blocks, index them."""
    blocks.admit(seq, blocks.cached_prefix(seq))
    blocks.grow(seq, len(seq.token_ids))
    seq.num_computed_tokens = len(seq.token_ids)
    blocks.cache_computed(seq)


def _run_step(scheduler: Scheduler) -> list[Chunk]:
    """Schedule a step, index what it computed and append a token to every sampling sequence."""
    chunks = scheduler.schedule()
    for chunk in chunks:
        scheduler.blocks.cache_computed(chunk.seq)
        if chunk.samples:
            chunk.seq.token_ids.append(999)
    return chunks


# Hashing ------------------------------------------------------------------------------------------


def test_a_block_hash_depends_on_every_block_before_it():
    first, other_first = (chain_hash(root_hash(None), tokens) for tokens in ([1, 2, 3, 4], [0, 2, 3, 4]))
    assert chain_hash(first, [5, 6, 7, 8]) != chain_hash(other_first, [5, 6, 7, 8])


def test_the_same_tokens_hash_alike_and_different_tokens_do_not():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    one, same = _sequence("one", list(range(8))), _sequence("same", list(range(8)))
    other = _sequence("other", [*range(7), 99])
    hashes = [blocks.block_hashes(seq, 2) for seq in (one, same, other)]
    assert hashes[0] == hashes[1]
    assert hashes[0][0] == hashes[2][0] and hashes[0][1] != hashes[2][1]


def test_a_cache_salt_changes_every_hash_of_the_chain():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    plain, salted = blocks.block_hashes(_sequence("a", tokens), 2), blocks.block_hashes(
        _sequence("b", tokens, cache_salt="adapter-1"), 2
    )
    assert all(left != right for left, right in zip(plain, salted, strict=True))


def test_a_different_salt_finds_nothing_cached():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    _computed(blocks, _sequence("first", list(range(9)), cache_salt="adapter-1"))
    assert blocks.cached_prefix(_sequence("base", list(range(9)))) == []
    assert len(blocks.cached_prefix(_sequence("same adapter", list(range(9)), cache_salt="adapter-1"))) == 2


# Lookup --------------------------------------------------------------------------------------------


def test_a_new_sequence_reuses_the_leading_full_blocks_that_match():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    first = _sequence("first", list(range(10)))  # blocks [0-3] [4-7] and a partial [8, 9]
    _computed(blocks, first)
    diverging = _sequence("diverging", [0, 1, 2, 3, 4, 5, 99, 7, 8, 9, 10])
    longer = _sequence("longer", list(range(13)))
    assert blocks.cached_prefix(diverging) == first.block_table[:1]
    assert blocks.cached_prefix(longer) == first.block_table[:2]  # the partial block is never shared


def test_a_fully_cached_prompt_still_leaves_its_last_token_to_compute():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    _computed(blocks, _sequence("first", list(range(8))))
    again = _sequence("again", list(range(8)))
    assert len(blocks.cached_prefix(again)) == 1  # the block holding the last token is recomputed


def test_nothing_is_cached_with_prefix_caching_off():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    first = _sequence("first", list(range(9)))
    _computed(blocks, first)
    assert blocks.cached_prefix(_sequence("again", list(range(9)))) == []
    blocks.release(first)
    assert not any(blocks.is_cached(block) for block in range(8))


# Reference counts and eviction ------------------------------------------------------------------------


def test_shared_blocks_are_counted_once_per_holder():
    blocks = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    first, second = _sequence("first", list(range(9))), _sequence("second", list(range(9)))
    _computed(blocks, first)
    _computed(blocks, second)
    shared = first.block_table[:2]
    assert second.block_table[:2] == shared and second.block_table[2] != first.block_table[2]
    assert [blocks.ref_count(block) for block in shared] == [2, 2]
    blocks.release(first)
    assert [blocks.ref_count(block) for block in shared] == [1, 1]
    assert blocks.usage == 3 / 8


def test_a_released_block_keeps_its_content_until_no_free_block_is_left():
    blocks = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    first = _sequence("first", list(range(8)))
    _computed(blocks, first)
    cached = list(first.block_table)
    blocks.release(first)
    assert blocks.usage == 0.0 and all(blocks.is_cached(block) for block in cached)
    filler = _sequence("filler", [50, 51, 52, 53, 54, 55, 56, 57])
    blocks.admit(filler, [])
    blocks.grow(filler, 8)  # takes the two free blocks
    assert set(filler.block_table).isdisjoint(cached)
    assert len(blocks.cached_prefix(_sequence("again", list(range(9))))) == 2


def test_eviction_takes_the_least_recently_released_block_first_and_a_tail_before_its_head():
    blocks = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    older, newer = _sequence("older", list(range(8))), _sequence("newer", list(range(100, 108)))
    _computed(blocks, older)
    _computed(blocks, newer)
    older_blocks = list(older.block_table)
    blocks.release(older)
    blocks.release(newer)
    taker = _sequence("taker", [])
    blocks.admit(taker, [])
    blocks.grow(taker, BLOCK_SIZE)
    assert taker.block_table == [older_blocks[1]]
    assert blocks.cached_prefix(_sequence("older again", list(range(9)))) == older_blocks[:1]
    blocks.grow(taker, 2 * BLOCK_SIZE)
    assert taker.block_table == [older_blocks[1], older_blocks[0]]
    assert blocks.cached_prefix(_sequence("older again", list(range(9)))) == []
    assert len(blocks.cached_prefix(_sequence("newer again", list(range(100, 109))))) == 2


def test_taking_a_cached_block_back_removes_it_from_the_evictable_pool():
    blocks = BlockManager(num_blocks=3, block_size=BLOCK_SIZE)
    first = _sequence("first", list(range(8)))
    _computed(blocks, first)
    blocks.release(first)
    again = _sequence("again", list(range(9)))
    cached = blocks.cached_prefix(again)
    assert blocks.can_admit(again, cached, 9)  # two reused blocks and the one free block
    blocks.admit(again, cached)
    blocks.grow(again, 9)
    assert blocks.usage == 1.0 and not blocks.can_hold(again, 13)


def test_blocks_are_found_only_once_the_step_computing_them_has_run():
    scheduler = Scheduler(BlockManager(16, BLOCK_SIZE), max_num_seqs=8, max_num_batched_tokens=64)
    first, together = _sequence("first", list(range(10))), _sequence("together", [*range(8), 70, 71])
    scheduler.add(first)
    scheduler.add(together)
    chunks = scheduler.schedule()
    assert [(chunk.seq, chunk.start) for chunk in chunks] == [(first, 0), (together, 0)]
    assert scheduler.blocks.cached_prefix(_sequence("meanwhile", list(range(9)))) == []
    for chunk in chunks:  # the step ran
        scheduler.blocks.cache_computed(chunk.seq)
    assert scheduler.blocks.cached_prefix(_sequence("after", list(range(9)))) == first.block_table[:2]


def test_a_block_computed_twice_is_indexed_once_and_the_copy_is_freed_plain():
    blocks = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    first, twin = _sequence("first", list(range(4))), _sequence("twin", list(range(4)))
    for seq in (first, twin):  # admitted in the same step: neither found the other's block yet
        blocks.admit(seq, [])
        blocks.grow(seq, 4)
    for seq in (first, twin):
        seq.num_computed_tokens = 4
        blocks.cache_computed(seq)
    assert blocks.is_cached(first.block_table[0]) and not blocks.is_cached(twin.block_table[0])


# Scheduling --------------------------------------------------------------------------------------------


def test_the_token_budget_counts_only_the_tokens_computed():
    scheduler = Scheduler(BlockManager(16, BLOCK_SIZE), max_num_seqs=8, max_num_batched_tokens=12)
    scheduler.add(_sequence("first", list(range(10))))
    _run_step(scheduler)
    for index in range(3):
        scheduler.add(_sequence(f"shares 8 tokens {index}", [*range(8), 50 + index, 60 + index]))
    chunks = _run_step(scheduler)
    # One decode plus three prompts of which only the last 2 tokens each are computed: 7 <= 12.
    assert [(chunk.start, chunk.length) for chunk in chunks] == [(10, 1), (8, 2), (8, 2), (8, 2)]
    assert [chunk.seq.num_cached_tokens for chunk in chunks[1:]] == [8, 8, 8]


def test_admission_counts_only_the_blocks_a_request_still_needs():
    # 4 blocks: the first sequence holds 3; a sequence of 3 blocks sharing 2 of them needs just 1.
    scheduler = Scheduler(BlockManager(4, BLOCK_SIZE), max_num_seqs=8, max_num_batched_tokens=64)
    first = _sequence("first", list(range(10)))
    scheduler.add(first)
    _run_step(scheduler)
    sharing = _sequence("sharing", [*range(8), 70, 71])
    scheduler.add(sharing)
    chunks = _run_step(scheduler)
    assert [chunk.seq for chunk in chunks] == [first, sharing]


def test_a_preempted_sequence_is_readmitted_with_what_is_still_cached():
    scheduler = Scheduler(BlockManager(4, BLOCK_SIZE), max_num_seqs=8, max_num_batched_tokens=64)
    oldest, newest = _sequence("oldest", list(range(8))), _sequence("newest", list(range(20, 28)))
    scheduler.add(oldest)
    scheduler.add(newest)
    _run_step(scheduler)  # both prompts fill their two blocks exactly and sample a token
    chunks = _run_step(scheduler)  # the oldest needs a third block: the newest is preempted
    assert [chunk.seq for chunk in chunks] == [oldest] and scheduler.num_preemptions == 1
    scheduler.finish(oldest)
    chunks = _run_step(scheduler)
    # Its tail block went to the oldest; its first block was still cached, so only the rest is recomputed.
    assert [(chunk.seq, chunk.start, chunk.length) for chunk in chunks] == [(newest, 4, 5)]
    assert newest.num_cached_tokens == 0  # usage reports what the first admission found
