"""From engine requests to choice deltas: admission, detokenization, stop strings, n choices merged.

Every engine request opened here is closed on every path (finish, stop string, error, client
disconnect): closing its event iterator is what makes the engine abort it and free its KV memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from transformers import PreTrainedTokenizerBase

from inference.api.text_output import IncrementalDetokenizer, StopStringMatcher
from inference.engine.request import GenerationRequest, TokenEvent

if TYPE_CHECKING:
    from inference.api.state import ServingEngine
    from inference.engine.stream import RequestStream

T = TypeVar("T")


@dataclass(frozen=True)
class OutputToken:
    """A generated token and its share of the output text: the text it completed, so that the shares
    of all tokens joined are the output (a token holding half a character has none)."""

    event: TokenEvent
    text: str


@dataclass
class ChoiceDelta:
    index: int
    text: str
    tokens: list[OutputToken] = field(default_factory=list)
    finish_reason: str | None = None


class _TokenRelease:
    """Hands out tokens as the text they produced is released, so that held-back text (a partial
    character, a possible stop string) delays its tokens rather than dropping them."""

    def __init__(self) -> None:
        self._pending: deque[OutputToken] = deque()
        self._released_chars = 0

    def add(self, token: OutputToken) -> None:
        self._pending.append(token)

    def release(self, text: str) -> list[OutputToken]:
        self._released_chars += len(text)
        out = []
        while self._pending and len(self._pending[0].text) <= self._released_chars:
            token = self._pending.popleft()
            self._released_chars -= len(token.text)
            out.append(token)
        return out

    def finish(self, text: str) -> list[OutputToken]:
        """Every token left; where the output was cut short, their text is cut to what was released."""
        out = self.release(text)
        for token in self._pending:
            kept = token.text[: self._released_chars]
            self._released_chars -= len(kept)
            out.append(OutputToken(token.event, kept))
        self._pending.clear()
        return out


class OpenedRequest:
    """An engine request past admission: its first event has arrived, so refusals were raised already."""

    def __init__(
        self, engine: ServingEngine, request_id: str, first: TokenEvent | None, rest: RequestStream
    ) -> None:
        self._engine = engine
        self._request_id = request_id
        self._first = first
        self._rest = rest

    async def arrivals(self) -> AsyncIterator[list[TokenEvent]]:
        """The request's tokens, in lists of those that arrived together (see `RequestStream.arrived`)."""
        if self._first is not None:
            yield [self._first]
        while events := await self._rest.arrived():
            yield events

    def finish_on_stop_string(self) -> None:
        # A normal finish for the engine, unlike closing the stream, which counts as a cancellation.
        self._engine.abort(self._request_id, reason="stop")

    async def aclose(self) -> None:
        await self._rest.aclose()


async def open_request(engine: ServingEngine, request: GenerationRequest) -> OpenedRequest:
    events = engine.generate(request)
    try:
        first = await anext(events, None)
    except BaseException:
        await events.aclose()
        raise
    return OpenedRequest(engine, request.request_id, first, events)


async def open_all(engine: ServingEngine, requests: Sequence[GenerationRequest]) -> list[OpenedRequest]:
    """Open every request or none: if one is refused, the ones already admitted are aborted."""
    tasks = [asyncio.ensure_future(open_request(engine, request)) for request in requests]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is None:
                await task.result().aclose()
        raise
    return [task.result() for task in tasks]


async def choice_deltas(
    index: int,
    opened: OpenedRequest,
    tokenizer: PreTrainedTokenizerBase,
    prompt_token_ids: Sequence[int],
    stop: Sequence[str],
) -> AsyncIterator[ChoiceDelta]:
    """Text deltas of one choice, one per arrival of tokens; the last one carries the finish reason."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids)
    matcher = StopStringMatcher(stop)
    tokens = _TokenRelease()
    try:
        async for events in opened.arrivals():
            texts: list[str] = []
            released: list[OutputToken] = []
            finish_reason = None
            for event in events:
                final = event.finish_reason is not None
                new_text = detokenizer.push(event.token_id) + (detokenizer.flush() if final else "")
                tokens.add(OutputToken(event, new_text))
                text, stopped = matcher.feed(new_text, final=final)
                texts.append(text)
                finish_reason = "stop" if stopped else event.finish_reason
                if finish_reason is not None:
                    if stopped and not final:
                        opened.finish_on_stop_string()
                    released += tokens.finish(text)
                    break  # tokens after a stop string are not the output's
                released += tokens.release(text)
            yield ChoiceDelta(index, "".join(texts), released, finish_reason)
            if finish_reason is not None:
                return
        # The engine ended the request without a finish reason: it was stopped under us.
        text, _ = matcher.feed(detokenizer.flush(), final=True)
        yield ChoiceDelta(index, text, tokens.finish(text), "abort")
    finally:
        await opened.aclose()


@dataclass
class _Failed:
    error: BaseException


_EXHAUSTED = object()


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Items of all streams as each produces them; closing the merge cancels and closes every stream."""
    if len(streams) == 1:
        # Most requests have one choice: its items pass straight through, without a task and a queue
        # on the way, which every token of every running request would pay for on the event loop.
        try:
            async for item in streams[0]:
                yield item
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait(item)
        except Exception as error:
            queue.put_nowait(_Failed(error))
        finally:
            queue.put_nowait(_EXHAUSTED)

    tasks = [asyncio.ensure_future(pump(stream)) for stream in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _EXHAUSTED:
                remaining -= 1
            elif isinstance(item, _Failed):
                raise item.error
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        # return_exceptions absorbs the pumps' cancellation; ours, if it comes, propagates.
        await asyncio.gather(*tasks, return_exceptions=True)
