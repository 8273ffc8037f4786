"""The OpenAPI document served at /openapi.json, true to what the server does.

FastAPI documents a 422 for every body it validates; this server answers invalid bodies with 400 in
OpenAI's error shape, so the 422 and its schemas are replaced by the errors the server really sends.
The document describes only the public API and is served without the key: tools and SDK generators
fetch it before they hold one, and outside the cluster only /v1 is routed to the server anyway.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from inference.api.schemas import ErrorResponse

_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
BEARER = "bearer"


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries: each status answered with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}


# What the HTTP edge can answer on any route.
EDGE_ERRORS = error_responses({
    408: "The request body did not arrive in time.",
    413: "The request body is over --max-request-body-bytes.",
    429: "Too many open connections, or the waiting queue is full; see Retry-After.",
    500: "An internal error while serving this request; other requests are unaffected.",
})


_UNAUTHORIZED = {
    "description": "The API key is missing or wrong.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def install_openapi(app: FastAPI, requires_api_key: bool) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app, requires_api_key)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(app: FastAPI, requires_api_key: bool) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if requires_api_key and path.startswith("/v1/"):
                operation["security"] = [{BEARER: []}]
                operation["responses"]["401"] = _UNAUTHORIZED
    if requires_api_key:
        document["components"]["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
    return document
