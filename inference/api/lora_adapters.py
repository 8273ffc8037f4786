"""vLLM's runtime LoRA routes: POST /v1/load_lora_adapter and POST /v1/unload_lora_adapter.

The app mounts them only with `allow_runtime_lora_updating`, which the config accepts only with an
API key: loading reads a path on the server, so it is never open to callers without the key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from inference.api.errors import APIError
from inference.api.openapi import error_responses
from inference.api.schemas import LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from inference.api.state import serving_state_of
from inference.engine.request import LoraLoadError, UnknownModelError

router = APIRouter(
    prefix="/v1",
    responses=error_responses({
        400: "An invalid value, named by `param`; an adapter that does not load.",
        404: "No adapter of that name.",
        503: "The server is loading, draining or stopped; see Retry-After.",
    }),
)


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    _, engine = serving_state_of(request.app).serving_engine()
    try:
        await engine.load_lora_adapter(body.lora_name, Path(body.lora_path))
    except LoraLoadError as error:
        raise APIError(400, str(error), param="lora_path", code="invalid_value") from error
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    _, engine = serving_state_of(request.app).serving_engine()
    try:
        await engine.unload_lora_adapter(body.lora_name)
    except UnknownModelError as error:
        raise APIError(404, str(error), param="lora_name", code="model_not_found") from error
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
