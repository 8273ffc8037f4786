"""Bearer-token authentication for every /v1 route; health and metrics stay open for probes and scrapes.

It runs as ASGI middleware rather than a route dependency so that it answers before the body is
parsed: a caller without the key learns nothing about the body's validity or the routes that exist.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from inference.api.errors import APIError
from inference.config import ServerConfig

PROTECTED_PREFIX = "/v1"


def load_api_key(config: ServerConfig) -> bytes | None:
    """The configured key as bytes, read once at start; None when the server runs without one."""
    if config.api_key_file is not None:
        key = config.api_key_file.read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"api_key_file {config.api_key_file} is empty")
        return key.encode()
    if config.api_key is not None and config.api_key.get_secret_value():
        return config.api_key.get_secret_value().encode()
    return None


def bearer_token(authorization: str | None) -> bytes | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()


def key_matches(presented: bytes | None, expected: bytes) -> bool:
    # compare_digest takes time independent of where the first differing byte is.
    return presented is not None and hmac.compare_digest(presented, expected)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: bytes | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or not _is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = bearer_token(Headers(scope=scope).get("authorization"))
        if key_matches(presented, self.api_key):
            await self.app(scope, receive, send)
            return
        message = "missing API key" if presented is None else "invalid API key"
        error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.response()(scope, receive, send)


def _is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
