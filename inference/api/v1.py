"""The OpenAI routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from inference import metrics
from inference.api.disconnect import ClientDisconnected, cancel_on_disconnect
from inference.api.errors import APIError, from_engine_error
from inference.api.generation import OpenedRequest, choice_deltas, merge, open_all
from inference.api.middleware import request_state
from inference.api.openapi import error_responses
from inference.api.prompts import chat_prompt_ids, completion_prompt_ids
from inference.api.responses import (
    ChatFormatter,
    CompletionFormatter,
    Formatter,
    UsageTally,
    collect,
    sse_stream,
)
from inference.api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
)
from inference.api.state import serving_state_of
from inference.config import ServerConfig
from inference.engine.request import (
    EngineError,
    EngineNotReadyError,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
)

if TYPE_CHECKING:
    from inference.engine.async_engine import AsyncEngine
    from inference.model_loading import LoadedModel

router = APIRouter(
    prefix="/v1",
    responses=error_responses({
        400: "An invalid value, named by `param`.",
        404: "No such model or route.",
        503: "The server is loading, draining or stopped; see Retry-After.",
    }),
)


# Each server-sent event, as OpenAPI 3.1 describes an event stream's items.
_SSE_EVENT = {
    "type": "object",
    "description": "`data`: a JSON chunk, an error object after a failure, and `[DONE]` last.",
    "properties": {"data": {"type": "string"}},
    "required": ["data"],
}


def _generation_responses(body: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """200: the whole response as JSON, or with `stream: true` server-sent events ending in `[DONE]`."""
    return {200: {"model": body, "content": {"text/event-stream": {"schema": _SSE_EVENT}}}}


# nginx's code for "client closed the request": nobody reads it, but logs and metrics can tell it apart.
CLIENT_CLOSED_REQUEST = 499
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def rejection_reason(error: EngineError) -> str | None:
    """The `reason` label of a refusal the API counts; the engine counts full queues itself."""
    if isinstance(error, EngineNotReadyError):
        return "not_ready"
    if isinstance(error, PromptTooLongError):
        return "prompt_too_long"
    return None


def _refusal(request: Request, error: EngineError, prompt_param: str) -> APIError:
    """The API error for a refusal, counted by reason where it has one."""
    reason = rejection_reason(error)
    if reason is not None:
        serving_state_of(request.app).collectors[metrics.REQUESTS_REJECTED.name].labels(reason=reason).inc()
    return from_engine_error(error, prompt_param)


def _check_model_name(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise APIError(404, f"the model '{requested}' does not exist; this server serves '{served}'",
                       param="model", code="model_not_found")


def _check_choice_count(prompt_count: int, n: int, config: ServerConfig, prompt_param: str) -> None:
    """More choices than the running batch and the queue together hold could never be admitted: a
    429 would invite retries that can never succeed."""
    capacity = config.max_num_seqs + config.max_queue_len
    if prompt_count * n > capacity:
        param = "n" if n > 1 else prompt_param
        message = (
            f"{param}: {prompt_count} prompt(s) x n={n} asks for {prompt_count * n} choices; this server "
            f"runs and queues at most {capacity} (max_num_seqs + max_queue_len)"
        )
        raise APIError(400, message, param=param, code="invalid_value")


def generation_requests(
    engine_request_id: str,
    prompts: Sequence[list[int]],
    body: SamplingFields,
    max_tokens: int | None,
    max_model_len: int,
    want_logprobs: bool,
) -> list[GenerationRequest]:
    """One engine request per choice: prompt-major, `n` per prompt, seeds seed, seed+1, ..."""
    requests: list[GenerationRequest] = []
    for prompt_index, prompt in enumerate(prompts):
        # Without max_tokens, generate up to the context; the engine refuses prompts that leave no room.
        limit = max_tokens if max_tokens is not None else max(max_model_len - len(prompt), 1)
        for choice in range(body.n):
            sampling = SamplingParams(
                max_tokens=limit,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=max(body.top_k, 0),
                seed=None if body.seed is None else body.seed + choice,
                logprobs=want_logprobs,
                ignore_eos=body.ignore_eos,
            )
            index = prompt_index * body.n + choice
            requests.append(GenerationRequest(f"{engine_request_id}-{index}", prompt, sampling))
    return requests


class _ClosingStreamingResponse(StreamingResponse):
    """Runs `cleanup` however the stream ends, even if the client left before the first chunk."""

    def __init__(self, content: object, cleanup: Callable[[], Awaitable[None]], **kwargs: object) -> None:
        super().__init__(content, **kwargs)  # type: ignore[arg-type]
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


async def _close_all(opened: Sequence[OpenedRequest]) -> None:
    for request in opened:
        await request.aclose()


async def _generate(
    request: Request,
    model: LoadedModel,
    engine: AsyncEngine,
    prompts: list[list[int]],
    body: SamplingFields,
    max_tokens: int | None,
    formatter: Formatter,
    prompt_param: str,
) -> Response:
    _check_choice_count(len(prompts), body.n, serving_state_of(request.app).config, prompt_param)
    # The engine is keyed on an id of our own: the client's X-Request-ID need not be unique.
    engine_requests = generation_requests(
        uuid.uuid4().hex, prompts, body, max_tokens, model.max_model_len, formatter.want_logprobs
    )
    tally = UsageTally([len(prompt) for prompt in prompts], body.n)
    request.state.prompt_tokens = sum(tally.prompt_lengths)
    try:
        opened = await cancel_on_disconnect(request, open_all(engine, engine_requests))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except EngineError as error:
        raise _refusal(request, error, prompt_param) from error

    streams = [
        choice_deltas(index, events, model.tokenizer, engine_request.prompt_token_ids, body.stop)
        for index, (events, engine_request) in enumerate(zip(opened, engine_requests, strict=True))
    ]
    deltas = merge(streams)

    def record_completion_tokens(count: int) -> None:
        request.state.completion_tokens = count

    if body.stream:
        stream = sse_stream(
            deltas,
            formatter,
            len(opened),
            tally,
            body.include_usage_chunk,
            record_completion_tokens,
            prompt_param,
        )

        async def cleanup() -> None:
            await stream.aclose()
            await _close_all(opened)

        return _ClosingStreamingResponse(
            stream, cleanup, media_type="text/event-stream", headers=_SSE_HEADERS
        )

    try:
        results = await cancel_on_disconnect(request, collect(deltas, len(opened)))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except Exception as error:
        raise from_engine_error(error, prompt_param) from error
    finally:
        await deltas.aclose()
        await _close_all(opened)
    for result in results:
        tally.add(result)
    record_completion_tokens(tally.completion_tokens)
    return JSONResponse(formatter.complete(results, tally.usage()))


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    model, _ = serving_state_of(request.app).serving_engine()
    card = ModelCard(
        id=model.name, created=0, max_model_len=model.max_model_len, quantization=model.quantization
    )
    return ModelList(data=[card])


@router.post("/chat/completions", response_model=None, responses=_generation_responses(ChatCompletion))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    model, engine = serving_state_of(request.app).serving_engine()
    _check_model_name(body.model, model.name)
    try:
        prompt = await asyncio.to_thread(chat_prompt_ids, model.tokenizer, body.messages, model.max_model_len)
    except PromptTooLongError as error:
        raise _refusal(request, error, "messages") from error
    formatter = ChatFormatter(
        id=f"chatcmpl-{request_state(request.scope)['request_id']}",
        model=model.name,
        tokenizer=model.tokenizer,
        want_logprobs=body.logprobs,
    )
    return await _generate(
        request, model, engine, [prompt], body, body.token_limit, formatter, "messages"
    )


@router.post("/completions", response_model=None, responses=_generation_responses(Completion))
async def completions(body: CompletionRequest, request: Request) -> Response:
    model, engine = serving_state_of(request.app).serving_engine()
    _check_model_name(body.model, model.name)
    try:
        prompts = await asyncio.to_thread(
            completion_prompt_ids, model.tokenizer, body.prompts, model.max_model_len
        )
    except PromptTooLongError as error:
        raise _refusal(request, error, "prompt") from error
    formatter = CompletionFormatter(
        id=f"cmpl-{request_state(request.scope)['request_id']}",
        model=model.name,
        tokenizer=model.tokenizer,
        want_logprobs=body.logprobs is not None,
    )
    return await _generate(request, model, engine, prompts, body, body.max_tokens, formatter, "prompt")
