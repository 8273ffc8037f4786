"""The FastAPI application: routes, error shape, auth, observation, and the model's life cycle.

The model loads in the background after the port opens, so liveness answers at once and readiness
says 503 until the engine runs; a slow load is then visible to probes instead of a refused port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from inference import metrics
from inference.api import lora_adapters, probes, v1
from inference.api.auth import ApiKeyMiddleware
from inference.api.body import BodyLimits
from inference.api.errors import install_error_handlers
from inference.api.loop_lag import watch_event_loop
from inference.api.middleware import RequestObserver
from inference.api.openapi import EDGE_ERRORS, install_openapi
from inference.api.state import ServingState
from inference.config import ServerConfig

logger = logging.getLogger(__name__)


async def start_engine(
    state: ServingState, engines: contextlib.AsyncExitStack, before_ready: Callable[[], None] | None
) -> None:
    """Load the model and start the engine (stopped when `engines` closes), run `before_ready`, then
    turn ready; a failure is recorded for the server to exit on."""
    # Imported here so the API (schemas, errors, auth) stays importable without the torch stack.
    from inference.engine.async_engine import AsyncEngine
    from inference.engine.process import EngineProcess
    from inference.model_loading import load_model

    try:
        if state.config.engine_process:
            engine = await engines.enter_async_context(EngineProcess(state.config))
            model = engine.model
        else:
            model = await asyncio.to_thread(load_model, state.config)
            # Registered first, so it runs after the engine stops: the other ranks of a split model go last.
            engines.callback(model.close)
            engine = await engines.enter_async_context(AsyncEngine(model, state.config, state.collectors))
    except Exception as error:
        state.startup_error = error
        logger.error("model loading failed: %s", error, exc_info=error)
        return
    if before_ready is not None:
        before_ready()
    state.model, state.engine = model, engine
    logger.info(
        "ready",
        extra={"model": model.name, "device": str(model.device), "max_model_len": model.max_model_len},
    )


def create_app(config: ServerConfig, before_ready: Callable[[], None] | None = None) -> FastAPI:
    """The app; `before_ready` runs once the engine has started, before the server turns ready."""
    state = ServingState.from_config(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as engines:
            starting = asyncio.create_task(start_engine(state, engines, before_ready))
            watching = asyncio.create_task(watch_event_loop(state.collectors[metrics.EVENT_LOOP_LAG.name]))
            try:
                yield
            finally:
                for task in (starting, watching):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app = FastAPI(
        title="llm-serving",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        responses=EDGE_ERRORS,
    )
    app.state.serving = state
    install_error_handlers(app, state.not_ready)
    app.include_router(probes.router)
    app.include_router(v1.router)
    if config.allow_runtime_lora_updating:
        app.include_router(lora_adapters.router)
    install_openapi(app, requires_api_key=state.api_key is not None)
    # The body is read (bounded) only once the caller is known to hold the key.
    app.add_middleware(
        BodyLimits, max_bytes=config.max_request_body_bytes, timeout_seconds=config.timeout_request_body
    )
    app.add_middleware(ApiKeyMiddleware, api_key=state.api_key)
    # Added last, so it runs first: every request is counted and logged, refused ones included.
    app.add_middleware(RequestObserver, collectors=state.collectors)
    return app
