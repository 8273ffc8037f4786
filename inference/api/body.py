"""Request bodies, bounded in size and time, are read whole here before anything parses them.

The limits cannot live in a route: FastAPI turns any error while reading a body into a generic 400.
So this middleware reads the body itself (refusing a declared or actual size over the limit with 413,
a body not complete in time with 408, both closing the connection) and replays it to the app.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.api.errors import APIError

# The rest of an over-sized or stalled body is never read, so the connection cannot carry another request.
_CLOSE = {"Connection": "close"}


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_seconds)
        except _BodyTooLarge:
            await self._too_large().response()(scope, receive, send)
            return
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout_seconds:g} s"
            error = APIError(408, message, code="request_timeout", headers=_CLOSE)
            await error.response()(scope, receive, send)
            return
        except _ClientGone:
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, which the routes watch for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> APIError:
        message = f"the request body is larger than {self.max_bytes} bytes (--max-request-body-bytes)"
        return APIError(413, message, code="request_too_large", headers=_CLOSE)
