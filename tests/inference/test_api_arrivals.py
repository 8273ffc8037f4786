"""A consumer that falls behind the engine takes the tokens that piled up in its request's stream in one
go, and the API sends them as one delta (one SSE chunk): the work per chunk is then paid once for all
of them, which is what keeps an overloaded event loop from falling further behind."""

from __future__ import annotations

import asyncio

import pytest

from inference.api.generation import ChoiceDelta, OpenedRequest, choice_deltas, open_request
from inference.engine.request import EngineNotReadyError, GenerationRequest, SamplingParams, TokenEvent
from inference.engine.stream import RequestStream
from inference.tiny_model import byte_level_tokenizer

from .conftest import run_with_engine

TEXT = "naïve café: 你好"  # multi-byte characters: most single byte tokens hold part of one


def _stream() -> RequestStream:
    return RequestStream("arrivals", on_abandon=lambda request_id: None)


def _ids(events: list[TokenEvent]) -> list[int]:
    return [event.token_id for event in events]


def test_a_stream_hands_over_everything_that_arrived_up_to_its_last_token():
    async def main() -> list[list[int]]:
        stream = _stream()
        for token_id in (1, 2, 3):
            stream.push(TokenEvent(token_id))
        first = await stream.arrived()
        waiting = asyncio.ensure_future(stream.arrived())
        await asyncio.sleep(0)  # it waits for the next token
        stream.push(TokenEvent(4))
        second = await waiting
        stream.push(TokenEvent(5))
        stream.push(TokenEvent(6, finish_reason="length"))
        stream.push(TokenEvent(7))  # after the last: never handed out
        return [_ids(first), _ids(second), _ids(await stream.arrived()), _ids(await stream.arrived())]

    assert asyncio.run(main()) == [[1, 2, 3], [4], [5, 6], []]


def test_tokens_before_a_failure_come_first_and_the_failure_next():
    async def main() -> tuple[list[int], BaseException | None]:
        stream = _stream()
        stream.push(TokenEvent(1))
        stream.push(TokenEvent(2))
        stream.push(EngineNotReadyError("the engine stopped"))
        before = await stream.arrived()
        try:
            await stream.arrived()
        except EngineNotReadyError as error:
            return _ids(before), error
        return _ids(before), None

    before, error = asyncio.run(main())
    assert before == [1, 2]
    assert isinstance(error, EngineNotReadyError)


def test_tokens_before_an_aborts_end_come_first_and_then_the_stream_ends():
    async def main() -> list[list[int]]:
        stream = _stream()
        stream.push(TokenEvent(1))
        stream.push(None)
        return [_ids(await stream.arrived()), _ids(await stream.arrived())]

    assert asyncio.run(main()) == [[1], []]


class _Aborts:
    """Where an opened request's stop-string finish goes: recorded here instead of an engine."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def abort(self, request_id: str, reason: str = "cancelled") -> None:
        self.calls.append((request_id, reason))


def _deltas_of_one_arrival(token_ids: list[int], stop: list[str]) -> tuple[list[ChoiceDelta], _Aborts]:
    """The deltas of a request whose first token arrived alone and every other one together."""
    tokenizer = byte_level_tokenizer()
    engine = _Aborts()

    async def main() -> list[ChoiceDelta]:
        stream = _stream()
        for token_id in token_ids[1:-1]:
            stream.push(TokenEvent(token_id))
        stream.push(TokenEvent(token_ids[-1], finish_reason="length"))
        opened = OpenedRequest(engine, "arrivals", TokenEvent(token_ids[0]), stream)  # type: ignore[arg-type]
        return [delta async for delta in choice_deltas(0, opened, tokenizer, [], stop)]

    return asyncio.run(main()), engine


def test_tokens_that_arrive_together_make_one_delta_with_all_their_text_and_tokens():
    token_ids = byte_level_tokenizer()(TEXT)["input_ids"]
    deltas, engine = _deltas_of_one_arrival(token_ids, stop=[])
    assert len(deltas) == 2
    assert "".join(delta.text for delta in deltas) == TEXT
    assert [token.event.token_id for delta in deltas for token in delta.tokens] == token_ids
    # Each token keeps its own share of the text: together, the text.
    assert "".join(token.text for token in deltas[1].tokens) == deltas[1].text
    assert [delta.finish_reason for delta in deltas] == [None, "length"]
    assert engine.calls == []


def test_a_stop_string_inside_an_arrival_cuts_its_text_and_its_tokens_there():
    token_ids = byte_level_tokenizer()(TEXT)["input_ids"]
    deltas, engine = _deltas_of_one_arrival(token_ids, stop=["café"])
    assert "".join(delta.text for delta in deltas) == "naïve "
    tokens = [token for delta in deltas for token in delta.tokens]
    # The tokens up to the one that completed the stop string, the last of "é"'s two bytes; none after.
    assert len(tokens) == len("naïve café".encode())
    assert deltas[-1].finish_reason == "stop"
    assert engine.calls == [("arrivals", "stop")]


@pytest.mark.parametrize("lagging", [False, True])
def test_a_consumer_behind_the_engine_gets_the_same_output_in_fewer_deltas(tiny_loaded, lagging):
    tokenizer = tiny_loaded.tokenizer
    prompt = tokenizer("The quick brown fox")["input_ids"]
    sampling = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)

    async def body(engine, registry) -> tuple[list[ChoiceDelta], list[int]]:
        stream = engine.generate(GenerationRequest("reference", prompt, sampling))
        reference = [event.token_id async for event in stream]
        opened = await open_request(engine, GenerationRequest("lagging", prompt, sampling))
        if lagging:  # the engine finishes the request before the consumer reads any more of it
            assert await engine.wait_idle(timeout=30)
            await asyncio.sleep(0.2)  # its last tokens' hand-over to this event loop
        deltas = [delta async for delta in choice_deltas(0, opened, tokenizer, prompt, [])]
        return deltas, reference

    deltas, reference = run_with_engine(tiny_loaded, body)
    assert [token.event.token_id for delta in deltas for token in delta.tokens] == reference
    assert "".join(delta.text for delta in deltas) == tokenizer.decode(reference, skip_special_tokens=True)
    assert deltas[-1].finish_reason == "length"
    if lagging:
        assert len(deltas) == 2  # the first token, then everything that piled up
