"""AsyncEngine behaviour through its public interface, on the tiny demo model."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from transformers import Gemma2Config

from inference import metrics
from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.attention import UnsupportedAttentionError
from inference.engine.request import (
    EngineNotReadyError,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    TokenEvent,
)
from inference.engine.stream import RequestStream
from inference.model_loading import load_model
from inference.tiny_model import byte_level_token_ids, save_random_model

from .conftest import run_with_engine

PROMPT = list(b"The quick brown fox jumps over the lazy dog")


def _greedy(request_id: str, max_tokens: int, prompt: list[int] = PROMPT, **params) -> GenerationRequest:
    return GenerationRequest(
        request_id, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, **params)
    )


def _endless(request_id: str) -> GenerationRequest:
    """A request that keeps the engine busy until it is aborted."""
    return _greedy(request_id, max_tokens=400, ignore_eos=True)


async def _collect(engine: AsyncEngine, request: GenerationRequest) -> list:
    return [event async for event in engine.generate(request)]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_ready_only_between_start_and_drain(tiny_loaded):
    async def body(engine, registry):
        started = engine.ready
        engine.begin_drain()
        return started, engine.ready

    assert run_with_engine(tiny_loaded, body) == (True, False)


def test_generate_before_start_is_refused(tiny_loaded):
    engine = AsyncEngine(tiny_loaded, ServerConfig())
    with pytest.raises(EngineNotReadyError):
        engine.generate(_greedy("early", 4))


def test_max_tokens_ends_with_length(tiny_loaded):
    async def body(engine, registry):
        return await _collect(engine, _greedy("r", 5, ignore_eos=True))

    events = run_with_engine(tiny_loaded, body)
    assert len(events) == 5
    assert [event.finish_reason for event in events] == [None] * 4 + ["length"]


def test_stop_token_ends_with_stop(tiny_loaded):
    async def body(engine, registry):
        free_run = await _collect(engine, _greedy("free", 6, ignore_eos=True))
        stop_token = free_run[2].token_id
        stopped = await _collect(
            engine, _greedy("stopped", 6, stop_token_ids=frozenset({stop_token}), ignore_eos=True)
        )
        return free_run, stopped, stop_token

    free_run, stopped, stop_token = run_with_engine(tiny_loaded, body)
    first_stop = next(index for index, event in enumerate(free_run) if event.token_id == stop_token)
    assert [event.token_id for event in stopped] == [event.token_id for event in free_run[: first_stop + 1]]
    assert stopped[-1].finish_reason == "stop"


def test_prompt_over_context_is_refused_at_submission(tiny_loaded):
    async def body(engine, registry):
        with pytest.raises(PromptTooLongError):
            engine.generate(_greedy("long", 10, prompt=[1] * (tiny_loaded.max_model_len - 5)))

    run_with_engine(tiny_loaded, body)


def test_token_ids_outside_vocabulary_are_refused(tiny_loaded):
    async def body(engine, registry):
        with pytest.raises(InvalidRequestError):
            engine.generate(_greedy("bad", 4, prompt=[10**6]))

    run_with_engine(tiny_loaded, body)


def test_full_queue_is_refused_and_counted(tiny_loaded):
    async def body(engine, registry):
        streams = [engine.generate(_endless("running")), engine.generate(_endless("queued"))]
        with pytest.raises(QueueFullError) as refused:
            engine.generate(_endless("one too many"))
        for stream in streams:
            await stream.aclose()
        return refused.value, _sample(registry, "llm_requests_rejected_total", reason="queue_full")

    error, rejected = run_with_engine(tiny_loaded, body, max_num_seqs=1, max_queue_len=1)
    assert error.retry_after_seconds >= 1
    assert rejected == 1


def test_closing_a_stream_frees_its_kv_blocks_and_counts_a_cancellation(tiny_loaded):
    async def body(engine, registry):
        stream = engine.generate(_endless("gone"))
        await anext(stream)
        busy = engine.stats()
        await stream.aclose()
        idle = await engine.wait_idle(timeout=10)
        return busy, idle, engine.stats(), _sample(registry, "llm_requests_cancelled_total")

    busy, idle, after, cancelled = run_with_engine(tiny_loaded, body)
    assert busy.running == 1 and busy.kv_cache_usage > 0
    assert idle and (after.running, after.waiting, after.kv_cache_usage) == (0, 0, 0.0)
    assert cancelled == 1


def test_cancelled_consumer_task_aborts_the_request(tiny_loaded):
    async def body(engine, registry):
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(_endless("task")):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await engine.wait_idle(timeout=10), _sample(registry, "llm_requests_cancelled_total")

    assert run_with_engine(tiny_loaded, body) == (True, 1)


def test_abort_for_a_stop_string_is_not_a_cancellation(tiny_loaded):
    async def body(engine, registry):
        stream = engine.generate(_endless("stop-string"))
        await anext(stream)
        engine.abort("stop-string", reason="stop")
        rest = [event async for event in stream]
        labels = {"model": tiny_loaded.name, "finish_reason": "stop"}
        finished = _sample(registry, "llm_request_duration_seconds_count", **labels)
        return rest, finished, _sample(registry, "llm_requests_cancelled_total")

    rest, finished, cancelled = run_with_engine(tiny_loaded, body)
    assert all(event.finish_reason is None for event in rest)
    assert (finished, cancelled) == (1, 0)


def test_drain_refuses_new_requests_and_finishes_running_ones(tiny_loaded):
    async def body(engine, registry):
        in_flight = asyncio.create_task(_collect(engine, _greedy("in-flight", 30, ignore_eos=True)))
        await asyncio.sleep(0)
        engine.begin_drain()
        with pytest.raises(EngineNotReadyError):
            engine.generate(_greedy("late", 4))
        return await engine.wait_idle(timeout=30), await in_flight

    idle, events = run_with_engine(tiny_loaded, body)
    assert idle
    assert len(events) == 30 and events[-1].finish_reason == "length"


def test_stop_fails_requests_still_in_flight(tiny_loaded):
    registry = CollectorRegistry()

    async def main() -> None:
        async with AsyncEngine(tiny_loaded, ServerConfig(), metrics.build_collectors(registry)) as engine:
            stream = engine.generate(_endless("orphan"))
            await anext(stream)
            await engine.stop()
            with pytest.raises(EngineNotReadyError):
                async for _ in stream:
                    pass

    asyncio.run(main())


def test_same_seed_gives_same_tokens_whatever_else_runs(tiny_loaded):
    sampling = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)

    async def body(engine, registry):
        alone = await _collect(engine, GenerationRequest("alone", PROMPT, sampling))
        crowd = [_greedy(f"other-{index}", 20, prompt=PROMPT[index:]) for index in range(8)]
        batched, *_ = await asyncio.gather(
            _collect(engine, GenerationRequest("batched", PROMPT, sampling)),
            *(_collect(engine, request) for request in crowd),
        )
        return alone, batched

    alone, batched = run_with_engine(tiny_loaded, body)
    assert [event.token_id for event in alone] == [event.token_id for event in batched]


def test_different_seeds_give_different_tokens(tiny_loaded):
    def seeded(seed: int) -> GenerationRequest:
        params = SamplingParams(max_tokens=24, temperature=1.0, seed=seed, ignore_eos=True)
        return GenerationRequest(f"seed-{seed}", PROMPT, params)

    async def body(engine, registry):
        return await asyncio.gather(_collect(engine, seeded(1)), _collect(engine, seeded(2)))

    first, second = run_with_engine(tiny_loaded, body)
    assert [event.token_id for event in first] != [event.token_id for event in second]


def test_logprobs_are_returned_when_asked(tiny_loaded):
    async def body(engine, registry):
        return await _collect(engine, _greedy("logprobs", 4, logprobs=True))

    events = run_with_engine(tiny_loaded, body)
    assert all(event.logprob is not None and event.logprob <= 0.0 for event in events)


def test_token_metrics_follow_the_requests(tiny_loaded):
    requests = [
        _greedy(f"metered-{index}", 3 + index, prompt=PROMPT[index:], ignore_eos=True) for index in range(4)
    ]

    async def body(engine, registry):
        await asyncio.gather(*(_collect(engine, request) for request in requests))
        return {
            name: _sample(registry, name, model=tiny_loaded.name)
            for name in (
                "llm_prompt_tokens_total",
                "llm_generation_tokens_total",
                "llm_time_to_first_token_seconds_count",
                "llm_inter_token_latency_seconds_count",
            )
        }

    observed = run_with_engine(tiny_loaded, body)
    generated = sum(request.sampling.max_tokens for request in requests)
    assert observed == {
        "llm_prompt_tokens_total": sum(len(request.prompt_token_ids) for request in requests),
        "llm_generation_tokens_total": generated,
        "llm_time_to_first_token_seconds_count": len(requests),
        "llm_inter_token_latency_seconds_count": generated - len(requests),
    }


def test_model_info_and_device_memory_are_exported(tiny_loaded):
    async def body(engine, registry):
        await _collect(engine, _greedy("any", 2))
        info = _sample(
            registry,
            "llm_model_info",
            model=tiny_loaded.name,
            dtype="float32",
            device="cpu",
            quantization="none",
        )
        return info, _sample(registry, "llm_device_memory_used_bytes", device="cpu")

    info, memory_used = run_with_engine(tiny_loaded, body)
    assert info == 1
    assert memory_used > 0


def test_a_stream_yields_tokens_pushed_before_and_while_it_waits_in_order():
    async def main() -> list[int]:
        stream = RequestStream("direct", on_abandon=lambda request_id: None)
        stream.push(TokenEvent(1))
        stream.push(TokenEvent(2))
        consumer = asyncio.create_task(_drain(stream))
        await asyncio.sleep(0)  # the consumer takes what is there, then waits for more
        stream.push(TokenEvent(3, finish_reason="length"))
        stream.push(TokenEvent(4))  # after the finish: never yielded
        return await consumer

    assert asyncio.run(main()) == [1, 2, 3]


async def _drain(stream: RequestStream) -> list[int]:
    return [event.token_id async for event in stream]


def test_a_model_with_an_attention_variant_the_engine_lacks_is_refused_at_start(tmp_path) -> None:
    # Gemma 2 soft-caps attention logits; computing plain attention instead would change its outputs.
    gemma2 = Gemma2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, **byte_level_token_ids(),
    )  # fmt: skip
    config = ServerConfig(model_path=save_random_model(gemma2, tmp_path / "gemma2"))
    engine = AsyncEngine(load_model(config), config)
    with pytest.raises(UnsupportedAttentionError, match="softcap"):
        asyncio.run(engine.start())
