"""OpenAI wire format: request bodies (validated) and response bodies (what the server writes)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from inference.engine.request import MAX_TOP_LOGPROBS

# torch.Generator seeds are 64-bit; leave headroom for seed + choice index with n > 1.
_MAX_SEED = 2**63 - 1 - 1024
_MAX_STOP_STRINGS = 16
MAX_CHOICES = 128
MAX_COMPLETION_LOGPROBS = 5
_MAX_LOGIT_BIAS = 300

LONE_SURROGATE = "lone_surrogate"
NonEmptyText = Annotated[str, Field(min_length=1)]
# What `stop` accepts, as the schema states it; the field itself is always a list.
StopInput = NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=_MAX_STOP_STRINGS)] | None


_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON's values with nothing inside: a list of only these (token ids, most often) needs no walk, and
# telling so runs at C speed, where a walk of an 8,000-token prompt held the event loop for milliseconds.
_SCALARS = frozenset({int, float, bool, type(None)})
# Values that stay as they are when integral floats become ints.
_WHOLE = frozenset({int, bool, str, type(None)})
_INTS = frozenset({int})


def lone_surrogate_path(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in parsed JSON a string holds a lone UTF-16 surrogate (`"\\ud800"` is valid JSON but not
    Unicode: no tokenizer or UTF-8 encoder accepts it); None if nowhere."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if lone_surrogate_path(key) is not None:
                return path
            if (found := lone_surrogate_path(item, (*path, str(key)))) is not None:
                return found
    if isinstance(value, list) and not _SCALARS.issuperset(map(type, value)):
        for index, item in enumerate(value):
            if (found := lone_surrogate_path(item, (*path, str(index)))) is not None:
                return found
    return None


def integral_floats_as_ints(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; strict validation would not, so such numbers become ints
    (harmless where a float is expected: an int is a valid float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list) and not _WHOLE.issuperset(map(type, value)):
        return [integral_floats_as_ints(item) for item in value]
    return value


class RequestBody(BaseModel):
    """Base of every request body and its parts: unknown fields ignored, JSON types read as the
    OpenAPI document (JSON Schema) says them (`"n": 2.0` is an integer, `"echo": 0` no boolean), text
    that is not Unicode refused (400)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _as_json_schema_reads_it(cls, data: Any) -> Any:
        path = lone_surrogate_path(data)
        if path is not None:
            param = ".".join(path) or None
            message = "text must be valid Unicode; it holds a lone UTF-16 surrogate"
            raise PydanticCustomError(LONE_SURROGATE, message, {"param": param})
        return integral_floats_as_ints(data)


class StreamOptions(RequestBody):
    include_usage: bool = False


# OpenAI fields that mean nothing to a self-hosted server: accepted and ignored without a warning.
ACCEPTED_WITHOUT_EFFECT = frozenset({
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_retention",
    "safety_identifier", "reasoning_effort",
})  # fmt: skip
# Older vLLM names of the structured-output fields, kept working.
_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}  # fmt: skip


def _refuse(field: str, reason: str) -> None:
    raise ValueError(f"{field} is not supported: {reason}")


class JsonSchemaFormat(RequestBody):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is json_schema")
        return self


class StructuredOutputs(RequestBody):
    """vLLM's `structured_outputs`: exactly one of a JSON schema, a regex, a choice or a grammar."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        kinds = ("json_", "regex", "choice", "grammar", "json_object")
        given = [name for name in kinds if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice, grammar, json_object")
        return self


class SamplingFields(RequestBody):
    """Fields that chat and text completions share."""

    # Unknown fields are ignored (with a warning in the log) rather than refused, as vLLM does, so
    # clients that send newer parameters keep working.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="0 or -1 disables top-k.")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    # JSON object keys are strings: token ids are read from them.
    logit_bias: dict[Annotated[int, Strict(False)], float] = Field(default_factory=dict)
    min_tokens: int = Field(0, ge=0)
    # vLLM's extension: generate exactly max_tokens (load tests, benchmarks).
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="before")
    @classmethod
    def _guided_fields_as_structured_outputs(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(name) is not None for name in _GUIDED_FIELDS):
            data = dict(data)
            guided = {new: data.pop(old) for old, new in _GUIDED_FIELDS.items() if data.get(old) is not None}
            if data.get("structured_outputs") is not None or len(guided) > 1:
                raise ValueError("give one of structured_outputs, guided_json, guided_regex, guided_choice, "
                                 "guided_grammar")
            data["structured_outputs"] = guided
        return data

    @field_validator("stop", mode="before", json_schema_input_type=StopInput)
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            if len(value) > _MAX_STOP_STRINGS:
                raise ValueError(f"at most {_MAX_STOP_STRINGS} stop strings")
            if any(isinstance(item, str) and not item for item in value):
                raise ValueError("stop strings must not be empty")
        return value

    # null means none, and the schema says so.
    @field_validator("logit_bias", mode="before", json_schema_input_type=dict[str, float] | None)
    @classmethod
    def _no_bias(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("stop_token_ids", mode="before", json_schema_input_type=list[int] | None)
    @classmethod
    def _no_stop_tokens(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[int, float]) -> dict[int, float]:
        if len(value) > _MAX_LOGIT_BIAS:
            raise ValueError(f"at most {_MAX_LOGIT_BIAS} tokens")
        if any(not -100.0 <= bias <= 100.0 for bias in value.values()):
            raise ValueError("biases must lie in [-100, 100]")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingFields:
        formatted = self.response_format is not None and self.response_format.type != "text"
        if self.structured_outputs is not None and formatted:
            raise ValueError("give response_format or structured_outputs, not both")
        return self

    @property
    def include_usage_chunk(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    @property
    def unknown_fields(self) -> list[str]:
        return sorted(set(self.model_extra or {}) - ACCEPTED_WITHOUT_EFFECT)


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class FunctionCall(RequestBody):
    name: str
    arguments: str


class ToolCall(RequestBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(RequestBody):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(RequestBody):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestBody):
    name: str


class NamedToolChoice(RequestBody):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    # Refused: they ask for what this server does not do (other modalities, predicted outputs, ...).
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    verbosity: Any = None

    @field_validator("audio", "prediction", "web_search_options", "verbosity")
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            _refuse(info.field_name, "this server serves text models without that option")
        return value

    @field_validator("functions", "function_call")
    @classmethod
    def _deprecated_functions(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            _refuse(info.field_name, "use tools and tool_choice")
        return value

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and set(value) - {"text"}:
            _refuse("modalities", "only text is generated")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        tools = info.data.get("tools") or []
        if value not in (None, "none") and not tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(value, NamedToolChoice) and value.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"tool_choice names {value.function.name!r}, which is not in tools")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
# As the schema says it: one text, texts, one token id list, token id lists; never empty.
Prompt = NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] | TokenIds | Annotated[
    list[TokenIds], Field(min_length=1)
]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    # Refused unless empty (below); the schema says so too.
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        # The union's own errors name every member it tried; these cases deserve one clear sentence.
        if not isinstance(value, str | list):
            raise ValueError(
                "prompt must be a string, a list of strings, a list of token ids or a list of those"
            )
        if value == "" or value == []:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and ("" in value or [] in value):
            raise ValueError("every prompt must have at least one character or token")
        return value

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _token_ids_at_once(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # pydantic tries every member of the union, and first fails a token id list as a list of texts,
        # one error per token: milliseconds of the event loop for a long prompt. A list that is plainly
        # token ids is taken at once; anything else (errors included) goes through the union.
        if type(value) is list and value and _INTS.issuperset(map(type, value)) and min(value) >= 0:
            return value
        return handler(value)

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a batch."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]  # type: ignore[list-item]
        return self.prompt  # type: ignore[return-value]

    @field_validator("suffix")
    @classmethod
    def _suffix_unsupported(cls, value: str | None) -> str | None:
        if value:
            _refuse("suffix", "insertion needs a fill-in-the-middle model")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported: prompt log-probabilities are not computed")
        return self


# Responses ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the server answers, whatever its status."""

    error: ErrorDetail


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache, not computed


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class _ResponseEnvelope(BaseModel):
    """The fields every completion response and stream chunk opens with."""

    id: str
    created: int
    model: str


class ChatCompletion(_ResponseEnvelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str = ""


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    """What a chat chunk adds, and only that: fields left None are not written."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _only_what_it_adds(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_ResponseEnvelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(_ResponseEnvelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-serving"
    max_model_len: int
    quantization: str = "none"  # the int8 scheme the weights are served with, if any
    parent: str | None = None  # for a LoRA adapter, the base model it runs on


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoraAdapterRequest(RequestBody):
    """vLLM's body for POST /v1/load_lora_adapter."""

    lora_name: str = Field(min_length=1, pattern=r"^\S+$")
    lora_path: str = Field(min_length=1)


class UnloadLoraAdapterRequest(RequestBody):
    """vLLM's body for POST /v1/unload_lora_adapter (its `lora_int_id` is accepted and not needed)."""

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
