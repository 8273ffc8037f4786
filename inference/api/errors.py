"""Every error leaves the server in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.api.schemas import LONE_SURROGATE
from inference.engine.request import (
    EngineNotReadyError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestFailedError,
    UnknownModelError,
)

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    503: "service_unavailable",
}


_UNION_MEMBER_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


class APIError(Exception):
    """An error with the HTTP status and OpenAI error fields it is answered with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_engine_error(error: Exception, prompt_param: str | None = None) -> APIError:
    """The API error an engine refusal maps to (`prompt_param` names the request's prompt field);
    anything unexpected is a logged 500."""
    if isinstance(error, QueueFullError):
        return APIError(
            429, str(error), code="queue_full", headers={"Retry-After": str(error.retry_after_seconds)}
        )
    if isinstance(error, EngineNotReadyError):
        return APIError(503, str(error) or "the server is not ready", code="not_ready")
    if isinstance(error, UnknownModelError):
        return APIError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, PromptTooLongError):
        return APIError(400, f"{prompt_param}: {error}", param=prompt_param, code="context_length_exceeded")
    if isinstance(error, InvalidRequestError):
        return APIError(400, f"{prompt_param}: {error}", param=prompt_param, code="invalid_value")
    if isinstance(error, RequestFailedError):
        # The engine logged the cause with its traceback; the client learns only that it failed.
        return APIError(500, str(error), code="internal_error")
    logger.error("generation failed", exc_info=error)
    return APIError(500, "internal error during generation", code="internal_error")


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One readable sentence naming the offending field, and that field as `param`."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == LONE_SURROGATE:
        # Raised for the whole body, this error carries the path to the offending text itself.
        param = first["ctx"]["param"]
    else:
        location = [str(part) for part in first.get("loc", ()) if not _is_union_member_tag(part)]
        if location and location[0] == "body":
            location = location[1:]
        param = ".".join(location) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    subject = param if param is not None else "request body"
    return f"{subject}: {message}", param


def _is_union_member_tag(part: object) -> bool:
    """Pydantic names the union member that failed (`str`, `list[TextPart]`); clients know fields only."""
    return isinstance(part, str) and (
        "[" in part or part in _UNION_MEMBER_NAMES or part.startswith("constrained-")
    )


def install_error_handlers(app: FastAPI, not_ready: Callable[[], APIError]) -> None:
    """OpenAI's error shape for every failure; `not_ready` makes the 503 of a server not serving."""

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(error.errors())
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        return APIError(error.status_code, message, headers=dict(error.headers or {})).response()

    @app.exception_handler(EngineNotReadyError)
    async def on_engine_not_ready(_: Request, __: EngineNotReadyError) -> JSONResponse:
        # A route that reached the engine as it stopped (a LoRA load racing its death) gets the 503
        # that a request arriving a moment later gets, not a 500.
        return not_ready().response()

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return APIError(500, "internal server error", code="internal_error").response()
