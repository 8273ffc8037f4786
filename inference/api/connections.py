"""The HTTP/1.1 protocol the server runs: uvicorn's h11 protocol with the bounds it lacks.

uvicorn times out only idle keep-alive connections. Here a connection must also deliver complete
request headers within `timeout_request_headers` of its first byte (or of being opened), so trickled
headers and silent sockets are closed; and connections over `limit_concurrency` get a 429 in
OpenAI's shape (uvicorn's own limit answers a plain-text 503) and are closed.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from inference.api.errors import APIError
from inference.config import ServerConfig


async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    error = APIError(
        429,
        "the server has too many open connections; retry shortly",
        code="too_many_connections",
        headers={"Retry-After": "1", "Connection": "close"},
    )
    await error.response()(scope, receive, send)


class BoundedH11Protocol(H11Protocol):
    # Not uvicorn's own attribute names: H11Protocol sets those per instance from its config.
    headers_timeout: float
    max_connections: int

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self.app = too_many_connections
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._await_headers()  # the first bytes of a new request: its headers are now due
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._headers_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._headers_deadline is None:
            self._headers_deadline = self.loop.call_later(self.headers_timeout, self._headers_late)

    def _headers_arrived(self) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None

    def _headers_late(self) -> None:
        self._headers_deadline = None
        if not self.transport.is_closing():
            # No request is under way, so there is nobody to answer: close, as for an idle keep-alive.
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()


def bounded_protocol(config: ServerConfig) -> type[BoundedH11Protocol]:
    """The protocol class for uvicorn's `http=`, with this server's bounds."""
    bounds = {"headers_timeout": config.timeout_request_headers, "max_connections": config.limit_concurrency}
    return type("BoundedH11Protocol", (BoundedH11Protocol,), bounds)
