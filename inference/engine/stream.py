"""One request's stream of tokens, from the engine thread to the coroutine serving the client."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from inference.engine.request import EngineError, TokenEvent

# What a stream's queue carries: a token, the end of an aborted request, or why the request failed.
StreamItem = TokenEvent | EngineError | None


def ends_stream(item: StreamItem) -> bool:
    """Whether `item` is a request's last: the end of an abort, a failure, or the finishing token."""
    return item is None or isinstance(item, EngineError) or item.finish_reason is not None


class RequestStream:
    """One request's tokens in order; the last has `finish_reason`. Closing the stream, or cancelling
    the task awaiting it, aborts the request. An aborted request's stream simply ends; if the
    request fails or the engine stops first, iterating raises that `EngineError`."""

    def __init__(self, request_id: str, on_abandon: Callable[[str], None]) -> None:
        self.request_id = request_id
        self._on_abandon = on_abandon
        # A deque and at most one waiting future, not an asyncio.Queue: every token of every running
        # request passes through here on the event loop, which the engine thread then waits on.
        self._items: deque[StreamItem] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        await self._arrival()
        event = self._take()
        if event is None:
            raise StopAsyncIteration
        return event

    async def arrived(self) -> list[TokenEvent]:
        """Every token that has arrived, waiting for the first; an empty list once the stream has ended.
        A consumer that fell behind the engine takes what piled up in one go (and sends it as one
        chunk, as vLLM's server does), so that an overloaded event loop does less work per token. A
        failure after some tokens is raised on the next call, once they are handed out."""
        if self._done:
            return []
        await self._arrival()
        events: list[TokenEvent] = []
        while self._items and not self._done:
            if events and type(self._items[0]) is not TokenEvent:
                break  # an abort's end or a failure: the next call's
            event = self._take()
            if event is not None:
                events.append(event)
        return events

    async def _arrival(self) -> None:
        if self._items:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        except asyncio.CancelledError:
            self._abandon()
            raise
        finally:
            self._waiter = None

    def _take(self) -> TokenEvent | None:
        """The next item's token; None for the end of an abort. A failure is raised."""
        item = self._items.popleft()
        if ends_stream(item):
            self._done = True
        if isinstance(item, EngineError):
            raise item
        return item

    async def aclose(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        if not self._done:
            self._done = True
            self._on_abandon(self.request_id)

    def push(self, item: StreamItem) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
