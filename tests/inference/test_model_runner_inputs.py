"""The runner's step inputs: a step that continues the decodes of the step before is built from that
step's arrays, and must equal the same step built from its chunks alone, whatever happened between
the two (blocks added, sequences preempted, re-admitted, finished or admitted)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from inference.config import ServerConfig
from inference.engine import model_runner
from inference.engine.core import EngineCore
from inference.engine.model_runner import ModelRunner, StepInputs
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.scheduler import Chunk
from inference.engine.sequence import Sequence
from inference.model_loading import LoadedModel

BLOCK_SIZE = 4


def _assert_same_inputs(built: StepInputs, expected: StepInputs) -> None:
    for name in ("token_ids", "positions", "slot_mapping", "sample_rows", "decode_rows", "decode_ends"):
        assert getattr(built, name).dtype == np.int64, name
        assert getattr(built, name).tolist() == getattr(expected, name).tolist(), name
    assert built.decode_blocks.tolist() == expected.decode_blocks.tolist()
    assert len(built.prefills) == len(expected.prefills)
    for (*bounds, context), (*expected_bounds, expected_context) in zip(
        built.prefills, expected.prefills, strict=True
    ):
        assert bounds == expected_bounds
        assert (context is None) == (expected_context is None)
        if context is not None:
            assert context.tolist() == expected_context.tolist()
    assert built.lora_segments == expected.lora_segments


def _from_scratch(chunks: list[Chunk]) -> StepInputs:
    return model_runner._HostStep(chunks, BLOCK_SIZE).inputs(chunks)


@pytest.fixture
def runner(tiny_loaded: LoadedModel) -> ModelRunner:
    return ModelRunner(tiny_loaded.model, tiny_loaded.device, BLOCK_SIZE)


def _sequence(request_id: str, token_ids: list[int], block_table: list[int]) -> Sequence:
    seq = Sequence(request_id, token_ids, SamplingParams(max_tokens=8), arrival_time=0.0)
    seq.block_table = block_table
    return seq


def _prefill_then_decode(runner: ModelRunner) -> tuple[Sequence, Sequence]:
    """Two five-token prompts prefilled, then their first decode: the run has begun."""
    first = _sequence("first", [1, 2, 3, 4, 5], [0, 1])
    second = _sequence("second", [6, 7, 8, 9, 10], [2, 3])
    runner.prepare([Chunk(first, 0, 5, True), Chunk(second, 0, 5, True)])
    for seq, token in ((first, 11), (second, 12)):
        seq.token_ids.append(token)
    return first, second


def test_a_decode_step_after_a_prefill_equals_one_built_from_scratch(runner):
    first, second = _prefill_then_decode(runner)
    chunks = [Chunk(first, 5, 1, True), Chunk(second, 5, 1, True)]
    inputs = runner.prepare(chunks)
    _assert_same_inputs(inputs, _from_scratch(chunks))
    assert inputs.token_ids.tolist() == [11, 12]
    assert inputs.slot_mapping.tolist() == [1 * BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 1]


def test_a_block_added_to_a_sequence_is_in_the_next_step(runner):
    first, second = _prefill_then_decode(runner)
    runner.prepare([Chunk(first, 5, 1, True), Chunk(second, 5, 1, True)])
    for seq in (first, second):
        seq.token_ids.append(13)
    runner.prepare([Chunk(first, 6, 1, True), Chunk(second, 6, 1, True)])
    first.token_ids.append(14)
    second.token_ids.append(14)
    first.block_table.append(7)  # position 8 starts the first sequence's third block
    second.block_table.append(4)
    chunks = [Chunk(first, 7, 1, True), Chunk(second, 7, 1, True)]
    inputs = runner.prepare(chunks)
    _assert_same_inputs(inputs, _from_scratch(chunks))
    first.token_ids.append(15)
    second.token_ids.append(15)
    chunks = [Chunk(first, 8, 1, True), Chunk(second, 8, 1, True)]
    inputs = runner.prepare(chunks)
    _assert_same_inputs(inputs, _from_scratch(chunks))
    assert inputs.slot_mapping.tolist() == [7 * BLOCK_SIZE, 4 * BLOCK_SIZE]
    assert inputs.decode_blocks.tolist() == [[0, 1, 7], [2, 3, 4]]


def test_a_sequence_readmitted_between_steps_reads_its_new_blocks(runner):
    """Preempted and admitted again in one schedule, with its first block found in the prefix cache,
    a sequence continues from where it was, in the same place of the batch, but in another block."""
    first, second = _prefill_then_decode(runner)
    second.block_table = [2, 5]  # the scheduler gives a re-admitted sequence a new list
    chunks = [Chunk(first, 5, 1, True), Chunk(second, 5, 1, True)]
    inputs = runner.prepare(chunks)
    _assert_same_inputs(inputs, _from_scratch(chunks))
    assert inputs.slot_mapping.tolist()[1] == 5 * BLOCK_SIZE + 1


@pytest.mark.parametrize(
    "next_chunks",
    [
        pytest.param(
            lambda first, second: [Chunk(second, 5, 1, True), Chunk(first, 5, 1, True)], id="reordered"
        ),
        pytest.param(lambda first, second: [Chunk(first, 5, 1, True)], id="one-finished"),
        pytest.param(
            lambda first, second: [Chunk(first, 4, 2, True), Chunk(second, 5, 1, True)], id="recomputed"
        ),
    ],
)
def test_any_other_step_is_built_from_its_chunks(runner, next_chunks):
    first, second = _prefill_then_decode(runner)
    chunks = next_chunks(first, second)
    _assert_same_inputs(runner.prepare(chunks), _from_scratch(chunks))


def test_a_step_prepared_twice_is_built_the_same_both_times(runner):
    first, second = _prefill_then_decode(runner)
    chunks = [Chunk(first, 5, 1, True), Chunk(second, 5, 1, True)]
    once = runner.prepare(chunks)
    _assert_same_inputs(runner.prepare(chunks), once)


def test_a_one_token_piece_of_a_prompt_is_not_taken_for_a_decode(runner):
    """A prompt prefilled in pieces whose next piece is one token long, beside a decode: that token is
    not the sequence's last, and it yields no logits."""
    first = _sequence("first", [1, 2, 3, 4, 5], [0, 1])
    chunked = _sequence("chunked", [6, 7, 8, 9, 10, 11, 12], [2, 3])
    runner.prepare([Chunk(first, 0, 5, True), Chunk(chunked, 0, 5, False)])
    first.token_ids.append(13)
    chunks = [Chunk(first, 5, 1, True), Chunk(chunked, 5, 1, False)]
    inputs = runner.prepare(chunks)
    _assert_same_inputs(inputs, _from_scratch(chunks))
    assert inputs.token_ids.tolist() == [13, 11]
    assert inputs.sample_rows.tolist() == [0]


def test_every_step_of_a_busy_engine_equals_one_built_from_scratch(tiny_loaded, monkeypatch):
    """Requests arrive over time, share prefixes, and overflow a small KV cache, so that steps
    continue runs, break them, and see sequences preempted and recomputed."""
    kv_bytes_per_token = 2 * 2 * 2 * 16 * 4  # layers x (keys, values) x KV heads x head size x float32
    config = ServerConfig(
        max_num_seqs=12, max_num_batched_tokens=64, kv_cache_block_size=BLOCK_SIZE,
        kv_cache_memory_bytes=kv_bytes_per_token * tiny_loaded.max_model_len,
    )  # fmt: skip
    core = EngineCore(tiny_loaded, config)
    prepare, checked, continued = core.runner.prepare, [0], [0]
    continue_run = model_runner._DecodeRun.inputs

    def counting_continue_run(run, chunks):
        continued[0] += 1
        return continue_run(run, chunks)

    def checking_prepare(chunks):
        inputs = prepare(chunks)
        _assert_same_inputs(inputs, _from_scratch(chunks))
        checked[0] += 1
        return inputs

    monkeypatch.setattr(model_runner._DecodeRun, "inputs", counting_continue_run)
    monkeypatch.setattr(core.runner, "prepare", checking_prepare)
    rng = random.Random(7)
    prefix = [rng.randrange(1, core.vocab_size) for _ in range(12)]
    for index in range(24):
        own = [rng.randrange(1, core.vocab_size) for _ in range(rng.randrange(1, 50))]
        sampling = SamplingParams(max_tokens=rng.randrange(4, 90), temperature=0.0, ignore_eos=True)
        prompt = prefix + own if index % 2 else own
        core.add(Sequence.from_request(GenerationRequest(f"r{index}", prompt, sampling), 0.0))
        for _ in range(rng.randrange(0, 3)):
            core.step()
    while core.sequences:
        core.step()
    assert core.scheduler.num_preemptions > 0
    assert checked[0] > continued[0] > checked[0] // 3
