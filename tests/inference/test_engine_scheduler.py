"""Scheduler and block manager: admission within budgets, chunked prefill, preemption by recompute."""

from __future__ import annotations

import random

from inference.engine.block_manager import BlockManager
from inference.engine.request import SamplingParams
from inference.engine.scheduler import Scheduler
from inference.engine.sequence import Sequence, SequenceStatus

BLOCK_SIZE = 4


def _sequence(request_id: str, prompt_tokens: int) -> Sequence:
    """A prompt of its own: no two requests share a prefix the cache could serve."""
    rng = random.Random(request_id)
    prompt = [rng.randrange(1000) for _ in range(prompt_tokens)]
    return Sequence(request_id, prompt, SamplingParams(max_tokens=8), arrival_time=0.0)


def _scheduler(num_blocks: int, max_num_seqs: int = 8, max_num_batched_tokens: int = 64) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, BLOCK_SIZE), max_num_seqs, max_num_batched_tokens)


def _decode_one_token(scheduler: Scheduler) -> list:
    """Schedule a step and append a token to every sequence that sampled, as the engine would."""
    chunks = scheduler.schedule()
    for chunk in chunks:
        if chunk.samples:
            chunk.seq.token_ids.append(0)
    return chunks


def test_prompts_of_different_lengths_share_a_step_unpadded():
    scheduler = _scheduler(num_blocks=16)
    for request_id, length in (("short", 3), ("long", 11)):
        scheduler.add(_sequence(request_id, length))
    chunks = scheduler.schedule()
    assert [(chunk.seq.request_id, chunk.start, chunk.length) for chunk in chunks] == [
        ("short", 0, 3),
        ("long", 0, 11),
    ]


def test_a_prompt_over_the_token_budget_is_prefilled_in_chunks():
    scheduler = _scheduler(num_blocks=16, max_num_batched_tokens=8)
    scheduler.add(_sequence("long", 20))
    spans = [
        (chunk.start, chunk.length, chunk.samples) for chunk in (scheduler.schedule()[0] for _ in range(3))
    ]
    assert spans == [(0, 8, False), (8, 8, False), (16, 4, True)]


def test_admission_stops_at_max_num_seqs():
    scheduler = _scheduler(num_blocks=16, max_num_seqs=2)
    for index in range(3):
        scheduler.add(_sequence(f"r{index}", 2))
    scheduler.schedule()
    assert (len(scheduler.running), len(scheduler.waiting)) == (2, 1)


def test_admission_waits_for_free_blocks():
    scheduler = _scheduler(num_blocks=3)
    scheduler.add(_sequence("fits", 8))
    scheduler.add(_sequence("does not fit yet", 8))
    scheduler.schedule()
    assert [seq.request_id for seq in scheduler.running] == ["fits"]


def test_newest_sequence_is_preempted_when_blocks_run_out():
    scheduler = _scheduler(num_blocks=4)
    oldest, newest = _sequence("oldest", 8), _sequence("newest", 8)
    scheduler.add(oldest)
    scheduler.add(newest)
    _decode_one_token(scheduler)  # both prompts fill their two blocks exactly
    chunks = _decode_one_token(scheduler)  # the oldest needs a third block
    assert [chunk.seq for chunk in chunks] == [oldest]
    assert newest.status is SequenceStatus.WAITING and newest.block_table == []
    assert newest.num_computed_tokens == 0 and scheduler.waiting[0] is newest
    assert scheduler.num_preemptions == 1


def test_a_preempted_sequence_is_recomputed_with_its_generated_tokens():
    scheduler = _scheduler(num_blocks=4)
    oldest, newest = _sequence("oldest", 8), _sequence("newest", 8)
    scheduler.add(oldest)
    scheduler.add(newest)
    _decode_one_token(scheduler)
    _decode_one_token(scheduler)
    scheduler.finish(oldest)
    chunks = scheduler.schedule()
    assert [(chunk.seq, chunk.start, chunk.length) for chunk in chunks] == [
        (newest, 0, len(newest.token_ids))
    ]


def test_finishing_a_sequence_returns_its_blocks():
    blocks = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    seq = _sequence("done", 9)
    scheduler.add(seq)
    scheduler.schedule()
    used = blocks.usage
    scheduler.finish(seq)
    assert used == 0.75 and blocks.usage == 0.0 and seq.status is SequenceStatus.FINISHED
