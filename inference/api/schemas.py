"""OpenAI wire format: request bodies (validated) and response bodies (what the server writes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# torch.Generator seeds are 64-bit; leave headroom for seed + choice index with n > 1.
_MAX_SEED = 2**63 - 1 - 1024
_MAX_STOP_STRINGS = 16
MAX_CHOICES = 128


LONE_SURROGATE = "lone_surrogate"
NonEmptyText = Annotated[str, Field(min_length=1)]
# What `stop` accepts, as the schema states it; the field itself is always a list.
StopInput = NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=_MAX_STOP_STRINGS)] | None


def _is_surrogate(character: str) -> bool:
    return "\ud800" <= character <= "\udfff"


def lone_surrogate_path(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in parsed JSON a string holds a lone UTF-16 surrogate (`"\\ud800"` is valid JSON but not
    Unicode: no tokenizer or UTF-8 encoder accepts it); None if nowhere."""
    if isinstance(value, str):
        return path if any(_is_surrogate(character) for character in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if lone_surrogate_path(key) is not None:
                return path
            if (found := lone_surrogate_path(item, (*path, str(key)))) is not None:
                return found
    if isinstance(value, list):
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
    if isinstance(value, list):
        return [integral_floats_as_ints(item) for item in value]
    return value


class RequestBody(BaseModel):
    """Base of every request body and its parts: unknown fields ignored, JSON types read as the
    OpenAPI document (JSON Schema) says them (`"n": 2.0` is an integer, `"echo": 0` no boolean), text
    that is not Unicode refused (400)."""

    # Unknown fields are ignored rather than refused, as other OpenAI-compatible servers do, so
    # clients that send newer parameters keep working.
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


class SamplingFields(RequestBody):
    """Fields that chat and text completions share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="0 or -1 disables top-k.")
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Refused unless 0 (below); the schema says so too.
    presence_penalty: float = Field(0.0, json_schema_extra={"const": 0})
    frequency_penalty: float = Field(0.0, json_schema_extra={"const": 0})
    user: str | None = None
    # vLLM's extension: generate exactly max_tokens (load tests, benchmarks).
    ignore_eos: bool = False

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

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalties_unsupported(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError("penalties are not supported; send 0 or leave it out")
        return value

    @property
    def include_usage_chunk(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=0, description="Only the chosen token is returned.")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0, strict=True)]], Field(min_length=1)]
# As the schema says it: one text, texts, one token id list, token id lists; never empty.
Prompt = NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] | TokenIds | Annotated[
    list[TokenIds], Field(min_length=1)
]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=1, description="Only the chosen token is returned.")
    # Unsupported: refused unless off (below); the schema says so too.
    echo: bool = Field(False, json_schema_extra={"const": False})
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        # The union's own errors name every member it tried; these cases deserve one clear sentence.
        if not isinstance(value, str | list):
            raise ValueError(
                "prompt must be a string, a list of strings, a list of token ids or a list of those"
            )
        if value == "" or value == []:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and any(item == "" or item == [] for item in value):
            raise ValueError("every prompt must have at least one character or token")
        return value

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a batch."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]  # type: ignore[list-item]
        return self.prompt  # type: ignore[return-value]

    @field_validator("echo")
    @classmethod
    def _echo_unsupported(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix_unsupported(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value


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


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
