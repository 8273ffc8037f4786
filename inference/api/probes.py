"""Endpoints for the platform rather than for users: Kubernetes probes and the Prometheus scrape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from inference.api.state import serving_state_of

router = APIRouter()

_NOT_READY = {503: {"description": "Loading, draining, failed or stopped; `status` says which."}}


@router.get("/health/live")
async def live() -> dict[str, str]:
    # Answered by the event loop itself: if this fails, the process is wedged and should restart.
    return {"status": "alive"}


@router.get("/health/ready", responses=_NOT_READY)
async def ready(request: Request) -> JSONResponse:
    state = serving_state_of(request.app)
    return JSONResponse({"status": state.phase}, status_code=200 if state.ready else 503)


@router.get("/health", responses=_NOT_READY)
async def health(request: Request) -> JSONResponse:
    """The seed's health check (Docker HEALTHCHECK, old probes): readiness with the model named."""
    state = serving_state_of(request.app)
    body = {
        "status": "healthy" if state.ready else state.phase,
        "model": state.model.name if state.model is not None else None,
    }
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics(request: Request) -> Response:
    exposition = await serving_state_of(request.app).metrics_exposition()
    return Response(exposition, media_type=CONTENT_TYPE_LATEST)
