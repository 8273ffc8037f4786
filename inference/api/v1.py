"""The OpenAI routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
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
    StreamPlan,
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
    NamedToolChoice,
    SamplingFields,
)
from inference.api.state import ServingState, serving_state_of
from inference.api.tools import ToolCallParserName, forced_call_grammar, template_tool_parser
from inference.config import ServerConfig
from inference.engine.grammar import GrammarSpec
from inference.engine.request import (
    EngineError,
    EngineNotReadyError,
    GenerationRequest,
    InvalidGrammarError,
    PromptTooLongError,
    SamplingParams,
)

if TYPE_CHECKING:
    from inference.api.state import ServingEngine
    from inference.model_loading import ModelFacts

logger = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1",
    responses=error_responses({
        400: "An invalid value, named by `param`.",
        404: "No such model or route.",
        503: "The server is loading, draining or stopped; see Retry-After.",
    }),
)

# nginx's code for "client closed the request": nobody reads it, but logs and metrics can tell it apart.
CLIENT_CLOSED_REQUEST = 499
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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


@dataclass(frozen=True)
class Job:
    """One API request as the engine will run it: what travels from the route to the response."""

    # The engine's ids are of our own: a client's X-Request-ID need not be unique.
    engine_request_id: str
    prompts: list[list[int]]
    body: SamplingFields
    sampling: SamplingParams  # of the first choice; choice i is seeded seed + i
    prompt_param: str  # the request field that holds the prompt, for errors about it
    token_limit: int | None  # as the client gave it
    max_model_len: int
    lora_name: str | None = None  # the adapter the request's `model` names; None: the base model

    def tally(self) -> UsageTally:
        return UsageTally([len(prompt) for prompt in self.prompts], self.body.n)

    def engine_requests(self) -> list[GenerationRequest]:
        """One engine request per choice: prompt-major, `n` per prompt, seeds seed, seed+1, ..."""
        requests = []
        for prompt_index, prompt in enumerate(self.prompts):
            for choice in range(self.body.n):
                seed = None if self.sampling.seed is None else self.sampling.seed + choice
                index = prompt_index * self.body.n + choice
                sampling = replace(self.sampling, seed=seed, max_tokens=self._token_limit(prompt))
                engine_id = f"{self.engine_request_id}-{index}"
                requests.append(GenerationRequest(engine_id, prompt, sampling, lora_name=self.lora_name))
        return requests

    def _token_limit(self, prompt: list[int]) -> int:
        # Without max_tokens, generate up to the context; the engine refuses prompts that leave no room.
        return self.token_limit if self.token_limit is not None else max(self.max_model_len - len(prompt), 1)

    def check_capacity(self, config: ServerConfig) -> None:
        """More choices than the running batch and the queue together hold could never be admitted: a
        429 would invite retries that can never succeed."""
        capacity = config.max_num_seqs + config.max_queue_len
        choices = len(self.prompts) * self.body.n
        if choices > capacity:
            param = "n" if self.body.n > 1 else self.prompt_param
            message = (
                f"{param}: {len(self.prompts)} prompt(s) x n={self.body.n} asks for {choices} choices; this "
                f"server runs and queues at most {capacity} (max_num_seqs + max_queue_len)"
            )
            raise APIError(400, message, param=param, code="invalid_value")

    def check_room(self) -> None:
        """Without a token limit, a prompt that fills the context is refused for what it is."""
        for prompt in self.prompts:
            if self.token_limit is None and len(prompt) >= self.max_model_len:
                raise PromptTooLongError(
                    f"the prompt has {len(prompt)} tokens, which leaves no room to generate within the "
                    f"context length of {self.max_model_len} tokens"
                )


def lora_name_for(requested: str | None, model: ModelFacts) -> str | None:
    """The LoRA adapter a request's `model` names; None for the base model (or no `model` at all)."""
    if requested is None or requested == model.name:
        return None
    if requested in model.adapter_names:
        return requested
    served = ", ".join(repr(name) for name in [model.name, *model.adapter_names])
    raise APIError(404, f"the model '{requested}' does not exist; this server serves {served}",
                   param="model", code="model_not_found")


def _warn_unknown_fields(body: SamplingFields) -> None:
    if unknown := body.unknown_fields:
        logger.warning("ignoring unknown request fields: %s", ", ".join(unknown))


def _output_grammar(body: SamplingFields) -> tuple[GrammarSpec, str] | None:
    """The grammar `response_format` or `structured_outputs` asks for, with the field it came from."""
    if (outputs := body.structured_outputs) is not None:
        if isinstance(outputs.json_, str):
            return GrammarSpec("json_schema", outputs.json_), "structured_outputs.json"
        if outputs.json_ is not None:
            return GrammarSpec.json_schema(outputs.json_), "structured_outputs.json"
        if outputs.regex is not None:
            return GrammarSpec("regex", outputs.regex), "structured_outputs.regex"
        if outputs.choice is not None:
            return GrammarSpec.choice(outputs.choice), "structured_outputs.choice"
        if outputs.grammar is not None:
            return GrammarSpec("lark", outputs.grammar), "structured_outputs.grammar"
        return GrammarSpec.json_schema({"type": "object"}), "structured_outputs.json_object"
    if (response_format := body.response_format) is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return GrammarSpec.json_schema({"type": "object"}), "response_format"
    assert response_format.json_schema is not None
    return GrammarSpec.json_schema(response_format.json_schema.schema_), "response_format.json_schema"


async def _sampling_params(
    engine: ServingEngine, body: SamplingFields, logprobs: int | None, grammar: tuple[GrammarSpec, str] | None
) -> SamplingParams:
    """The engine's parameters for `body`; `logprobs`: None for none, else how many alternatives."""
    for field, ids in (("logit_bias", body.logit_bias), ("stop_token_ids", body.stop_token_ids)):
        if any(not 0 <= token < engine.vocab_size for token in ids):
            message = f"{field}: token ids must lie in [0, {engine.vocab_size})"
            raise APIError(400, message, param=field, code="invalid_value")
    compiled = None
    if grammar is not None:
        spec, param = grammar
        try:
            compiled = await asyncio.to_thread(engine.compile_grammar, spec)
        except InvalidGrammarError as error:
            raise APIError(400, f"{param}: {error}", param=param, code="invalid_value") from error
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        min_p=body.min_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=dict(body.logit_bias),
        min_tokens=body.min_tokens,
        stop_token_ids=frozenset(body.stop_token_ids),
        logprobs=logprobs is not None,
        top_logprobs=logprobs or 0,
        ignore_eos=body.ignore_eos,
        grammar=compiled,
    )


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


async def _open(request: Request, engine: ServingEngine, job: Job) -> list[OpenedRequest] | Response:
    """Admit every choice of `job`, or answer the refusal (counted once, with its reason)."""
    state = serving_state_of(request.app)
    job.check_capacity(state.config)
    try:
        job.check_room()
        return await cancel_on_disconnect(request, open_all(engine, job.engine_requests()))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except EngineNotReadyError as error:
        raise state.not_ready() from error
    except EngineError as error:
        raise _refusal(state, error, job.prompt_param) from error


def _refusal(state: ServingState, error: EngineError, prompt_param: str) -> APIError:
    """The API error for a refusal, a prompt too long counted as such."""
    if isinstance(error, PromptTooLongError):
        state.count_rejection(metrics.RejectionReason.PROMPT_TOO_LONG)
    return from_engine_error(error, prompt_param)


async def _generate(
    request: Request, model: ModelFacts, engine: ServingEngine, job: Job, formatter: Formatter
) -> Response:
    tally = job.tally()
    request.state.prompt_tokens = sum(tally.prompt_lengths)
    opened = await _open(request, engine, job)
    if isinstance(opened, Response):
        return opened
    streams = [
        choice_deltas(index, events, model.tokenizer, engine_request.prompt_token_ids, job.body.stop)
        for index, (events, engine_request) in enumerate(zip(opened, job.engine_requests(), strict=True))
    ]
    deltas = merge(streams)

    def record_completion_tokens(count: int) -> None:
        request.state.completion_tokens = count

    if job.body.stream:
        plan = StreamPlan(formatter, len(opened), tally, job.body.include_usage_chunk)
        stream = sse_stream(deltas, plan, record_completion_tokens)

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
        raise from_engine_error(error, job.prompt_param) from error
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
    base = ModelCard(
        id=model.name, created=0, max_model_len=model.max_model_len, quantization=model.quantization
    )
    adapters = [
        base.model_copy(update={"id": name, "parent": model.name}) for name in model.adapter_names
    ]
    return ModelList(data=[base, *adapters])


def _tool_plan(
    body: ChatCompletionRequest,
    parser: ToolCallParserName | None,
    auto_enabled: bool,
    chat_template: str | None,
) -> tuple[ToolCallParserName | None, tuple[GrammarSpec, str] | None]:
    """The parser that reads tool calls from the reply, and the grammar that forces one, if any."""
    choice = body.tool_choice if body.tool_choice is not None else ("auto" if body.tools else "none")
    if not body.tools or choice == "none":
        return None, None
    if choice == "auto":
        if not auto_enabled or parser is None:
            message = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            raise APIError(400, message, param="tool_choice", code="invalid_value")
        return parser, None
    if _output_grammar(body) is not None:
        raise APIError(400, "tool_choice that forces a call cannot be combined with response_format or "
                       "structured_outputs", param="tool_choice", code="invalid_value")
    parser = parser or template_tool_parser(chat_template)
    name = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
    return parser, (forced_call_grammar(parser, body.tools, name, body.parallel_tool_calls), "tools")


@router.post("/chat/completions", response_model=None, responses=_generation_responses(ChatCompletion))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state = serving_state_of(request.app)
    model, engine = state.serving_engine()
    lora_name = lora_name_for(body.model, model)
    _warn_unknown_fields(body)
    config = state.config
    template = model.tokenizer.chat_template
    parser, forced = _tool_plan(body, config.tool_call_parser, config.enable_auto_tool_choice, template)
    try:
        prompt = await asyncio.to_thread(
            chat_prompt_ids, model.tokenizer, body.messages, model.max_model_len, body.tools
        )
    except PromptTooLongError as error:
        raise _refusal(state, error, "messages") from error
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    sampling = await _sampling_params(engine, body, logprobs, forced or _output_grammar(body))
    request_id = request_state(request.scope)["request_id"]
    engine_request_id = uuid.uuid4().hex
    job = Job(
        engine_request_id, [prompt], body, sampling, "messages", body.token_limit, model.max_model_len,
        lora_name,
    )
    formatter = ChatFormatter(
        id=f"chatcmpl-{request_id}",
        model=lora_name or model.name,
        token_bytes=engine.token_bytes,
        top_logprobs=logprobs,
        tool_parser=parser,
    )
    return await _generate(request, model, engine, job, formatter)


@router.post("/completions", response_model=None, responses=_generation_responses(Completion))
async def completions(body: CompletionRequest, request: Request) -> Response:
    state = serving_state_of(request.app)
    model, engine = state.serving_engine()
    lora_name = lora_name_for(body.model, model)
    _warn_unknown_fields(body)
    try:
        prompts = await asyncio.to_thread(
            completion_prompt_ids, model.tokenizer, body.prompts, model.max_model_len, model.vocab_size
        )
    except EngineError as error:
        raise _refusal(state, error, "prompt") from error
    sampling = await _sampling_params(engine, body, body.logprobs, _output_grammar(body))
    request_id = request_state(request.scope)["request_id"]
    job = Job(
        uuid.uuid4().hex, prompts, body, sampling, "prompt", body.max_tokens, model.max_model_len, lora_name
    )
    echoed = None
    if body.echo:
        texts = [model.tokenizer.decode(prompt, skip_special_tokens=True) for prompt in prompts]
        echoed = [text for text in texts for _ in range(body.n)]
    formatter = CompletionFormatter(
        id=f"cmpl-{request_id}",
        model=lora_name or model.name,
        token_bytes=engine.token_bytes,
        top_logprobs=body.logprobs,
        echoed=echoed,
    )
    return await _generate(request, model, engine, job, formatter)
