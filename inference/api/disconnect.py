"""Cancel work when the HTTP client goes away, so the engine stops spending a batch slot on it.

A streamed response gets this from Starlette (it cancels the body iterator on `http.disconnect`);
this covers the waits that happen before any byte is sent: admission and non-streamed generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def _disconnected(request: Request) -> None:
    # The body was read already, so the next message uvicorn delivers is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watcher):
            if not task.done():
                task.cancel()
        # return_exceptions absorbs the children's cancellation; ours, if it comes, propagates.
        await asyncio.gather(work_task, watcher, return_exceptions=True)
    if work_task.cancelled():
        raise ClientDisconnected
    return work_task.result()
