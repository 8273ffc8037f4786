"""Per-request observation: the HTTP metrics of the catalog, a request id, and one access log line.

Pure ASGI rather than BaseHTTPMiddleware so that a streamed response is timed to its last byte and
a client disconnect still reaches the route.
"""

from __future__ import annotations

import re
import time
import uuid

from prometheus_client.metrics import MetricWrapperBase
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference import metrics
from inference.logging import log_request

REQUEST_ID_HEADER = "x-request-id"
UNMATCHED_ROUTE = "unmatched"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_state(scope: Scope) -> dict:
    """The per-request dict that `request.state` in a route writes to and the observer reads."""
    return scope.setdefault("state", {})


def route_template(scope: Scope) -> str:
    # The template (`/v1/models`), never the raw path: label cardinality must stay bounded.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def _request_id(scope: Scope) -> str:
    candidate = Headers(scope=scope).get(REQUEST_ID_HEADER)
    if candidate is not None and _CLIENT_REQUEST_ID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


class RequestObserver:
    def __init__(self, app: ASGIApp, collectors: dict[str, MetricWrapperBase]) -> None:
        self.app = app
        self.requests_total = collectors[metrics.HTTP_REQUESTS.name]
        self.request_duration = collectors[metrics.HTTP_REQUEST_DURATION.name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        state = request_state(scope)
        state["request_id"] = request_id
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())
                message["headers"] = [*message.get("headers", []), request_id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"]
            route = route_template(scope)
            self.requests_total.labels(method=method, route=route, status=str(status)).inc()
            self.request_duration.labels(method=method, route=route).observe(elapsed)
            log_request(
                request_id=request_id,
                method=method,
                route=route,
                status=status,
                latency_seconds=elapsed,
                prompt_tokens=state.get("prompt_tokens"),
                completion_tokens=state.get("completion_tokens"),
            )
