"""What the routes share for the life of the process: config, metrics, the model, the engine, drain state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from starlette.applications import Starlette

from inference import metrics
from inference.api.auth import load_api_key
from inference.api.errors import APIError
from inference.config import ServerConfig
from inference.engine.request import EngineNotReadyError

if TYPE_CHECKING:
    from inference.engine.async_engine import AsyncEngine
    from inference.engine.process import EngineProcess
    from inference.model_loading import ModelFacts

    # The engine in this process (`--no-engine-process`) or in its own; the API sees the same methods.
    ServingEngine = AsyncEngine | EngineProcess

logger = logging.getLogger(__name__)


@dataclass
class ServingState:
    config: ServerConfig
    api_key: bytes | None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    collectors: dict[str, MetricWrapperBase] = field(default_factory=dict)
    model: ModelFacts | None = None
    engine: ServingEngine | None = None
    draining: bool = False
    startup_error: BaseException | None = None

    @classmethod
    def from_config(cls, config: ServerConfig) -> ServingState:
        state = cls(config=config, api_key=load_api_key(config))
        state.collectors = metrics.build_collectors(state.registry)
        return state

    @property
    def ready(self) -> bool:
        return not self.draining and self.engine is not None and self.engine.ready

    @property
    def failed(self) -> bool:
        """The model did not load or the engine loop died: nothing short of a restart will help."""
        engine_died = self.engine is not None and not self.engine.ready and not self.draining
        return self.startup_error is not None or engine_died

    @property
    def phase(self) -> str:
        if self.draining:
            return "draining"
        if self.startup_error is not None:
            return "failed"
        if self.engine is None:
            return "loading"
        return "ready" if self.engine.ready else "engine_stopped"

    async def metrics_exposition(self) -> bytes:
        """The Prometheus text of this process's metrics and, behind an engine process, the engine's."""
        engine_families = await self.engine.metric_families() if self.engine is not None else []
        return generate_latest(metrics.MergedFamilies(self.registry, engine_families))

    def count_rejection(self, reason: metrics.RejectionReason) -> None:
        self.collectors[metrics.REQUESTS_REJECTED.name].labels(reason=reason).inc()

    def not_ready(self) -> APIError:
        """The 503 for a request that finds the server loading, draining or stopped, counted."""
        phase = self.phase if self.phase != "ready" else "engine_stopped"
        self.count_rejection(metrics.RejectionReason(phase))
        message = f"the server is not ready ({phase})"
        return APIError(503, message, code="not_ready", headers={"Retry-After": "1"})

    def serving_engine(self) -> tuple[ModelFacts, ServingEngine]:
        """The model and engine for a new request, or 503 while loading, draining or stopped."""
        if not self.ready or self.model is None or self.engine is None:
            raise self.not_ready()
        return self.model, self.engine

    async def drain(self) -> bool:
        """Refuse new work at once, let in-flight requests finish; True when all did within the grace.

        Those still in flight when the grace runs out end in OpenAI's shape, not cut off: a 503 for
        requests never started, an error event and `[DONE]` for streams under way."""
        self.draining = True
        if self.engine is None:
            return True
        self.engine.begin_drain()
        finished = await self.engine.wait_idle(self.config.drain_timeout_seconds)
        logger.info("drain finished", extra={"all_requests_completed": finished})
        if not finished:
            self.engine.fail_all(EngineNotReadyError("the server shut down before the request finished"))
        return finished


def serving_state_of(app: Starlette) -> ServingState:
    """The state `create_app` attached to its app, for routes (`request.app`) and the server."""
    return app.state.serving
