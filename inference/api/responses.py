"""Choice deltas to OpenAI bodies: whole responses, SSE chunks, usage, logprobs; chat and text.

What differs between the endpoints lives on their formatter: the chat formatter parses tool calls
and writes chat logprobs; the text formatter echoes prompts and writes the legacy logprobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inference.api.errors import APIError, from_engine_error
from inference.api.generation import ChoiceDelta, OutputToken
from inference.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCallDelta,
    PromptTokensDetails,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from inference.api.tools import StreamingToolParser, ToolCallParserName, parse_reply
from inference.json_lines import one_line

TokenBytes = Callable[[int], bytes]


@dataclass
class UsageTally:
    """A response's token counts, added up from its deltas as they pass. Each prompt counts once
    however many choices it has; its cached tokens are the most any of its choices found cached."""

    prompt_lengths: Sequence[int]
    choices_per_prompt: int
    completion_tokens: int = 0
    _cached_by_prompt: dict[int, int] = field(default_factory=dict)

    def add(self, delta: ChoiceDelta) -> None:
        self.completion_tokens += len(delta.tokens)
        prompt = delta.index // self.choices_per_prompt
        for token in delta.tokens:
            if token.event.cached_prompt_tokens is not None:
                cached = max(self._cached_by_prompt.get(prompt, 0), token.event.cached_prompt_tokens)
                self._cached_by_prompt[prompt] = cached

    def usage(self) -> Usage:
        prompt_tokens = sum(self.prompt_lengths)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self._cached_by_prompt.values())),
        )


class Formatter(Protocol):
    """One wire format. `stream_delta` gets every delta and returns the chunks to send, as JSON text
    (none while nothing is new); `complete` gets each choice as one delta, all of its deltas joined."""

    def stream_start(self, choice_count: int) -> list[str]: ...
    def stream_delta(self, delta: ChoiceDelta) -> list[str]: ...
    def stream_usage(self, totals: Usage) -> str: ...
    def complete(self, choices: Sequence[ChoiceDelta], totals: Usage) -> dict[str, Any]: ...


@dataclass
class _Identity:
    id: str
    model: str
    token_bytes: TokenBytes
    # None: no logprobs; otherwise how many alternatives per token (0: the chosen token's only).
    top_logprobs: int | None
    created: int = field(default_factory=lambda: int(time.time()))

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


@dataclass
class ChatFormatter(_Identity):
    tool_parser: ToolCallParserName | None = None
    _streams: dict[int, StreamingToolParser] = field(default_factory=dict)

    def _entry(self, token_id: int, logprob: float) -> TopLogprob:
        text, own_bytes = self.token_text(token_id), list(self.token_bytes(token_id))
        return TopLogprob(token=text, logprob=logprob, bytes=own_bytes)

    def _logprobs(self, tokens: Sequence[OutputToken]) -> ChatLogprobs | None:
        if self.top_logprobs is None:
            return None
        content = []
        for token in tokens:
            logprobs = token.event.logprobs
            assert logprobs is not None
            entry = self._entry(token.event.token_id, logprobs.logprob)
            alternatives = [self._entry(token_id, value) for token_id, value in logprobs.top]
            content.append(ChatTokenLogprob(**entry.model_dump(), top_logprobs=alternatives))
        return ChatLogprobs(content=content)

    def _chunk(self, choices: list[ChatChunkChoice], totals: Usage | None = None) -> str:
        # Serialised by pydantic itself, not dumped to a dict for `json`: one of these per token.
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=totals
        )
        return chunk.model_dump_json()

    def stream_start(self, choice_count: int) -> list[str]:
        return [
            self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])
            for index in range(choice_count)
        ]

    def stream_delta(self, delta: ChoiceDelta) -> list[str]:
        text, calls, tool_deltas = delta.text, [], []
        final = delta.finish_reason is not None
        if self.tool_parser is not None:
            parser = self._streams.setdefault(delta.index, StreamingToolParser(self.tool_parser))
            first_index = parser.calls
            text, calls = parser.feed(delta.text, final=final)
            tool_deltas = [
                ToolCallDelta(
                    index=first_index + offset,
                    id=call.id,
                    type="function",
                    function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
                )
                for offset, call in enumerate(calls)
            ]
        if not text and not calls and not delta.tokens and not final:
            return []
        finish_reason = delta.finish_reason
        if final and self.tool_parser is not None and self._streams[delta.index].calls:
            finish_reason = "tool_calls"
        choice = ChatChunkChoice(
            index=delta.index,
            delta=ChatDelta(content=text or None, tool_calls=tool_deltas or None),
            logprobs=self._logprobs(delta.tokens) if delta.tokens else None,
            finish_reason=finish_reason,
        )
        return [self._chunk([choice])]

    def stream_usage(self, totals: Usage) -> str:
        return self._chunk([], totals)

    def _message(self, text: str) -> tuple[AssistantMessage, list[ToolCall]]:
        if self.tool_parser is None:
            return AssistantMessage(content=text), []
        parsed = parse_reply(self.tool_parser, text)
        message = AssistantMessage(content=parsed.content, tool_calls=parsed.tool_calls or None)
        return message, parsed.tool_calls

    def complete(self, choices: Sequence[ChoiceDelta], totals: Usage) -> dict[str, Any]:
        answers = []
        for choice in choices:
            message, calls = self._message(choice.text)
            finish_reason = "tool_calls" if calls and choice.finish_reason == "stop" else choice.finish_reason
            answers.append(
                ChatChoice(
                    index=choice.index,
                    message=message,
                    logprobs=self._logprobs(choice.tokens),
                    finish_reason=finish_reason,
                )
            )
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=answers, usage=totals
        ).model_dump()


@dataclass
class CompletionFormatter(_Identity):
    # With `echo`, the prompt text of each choice, written before its output.
    echoed: Sequence[str] | None = None
    _offsets: dict[int, int] = field(default_factory=dict)

    def _logprobs(self, index: int, tokens: Sequence[OutputToken]) -> CompletionLogprobs | None:
        if self.top_logprobs is None:
            return None
        position = self._offsets.get(index, len(self.echoed[index]) if self.echoed else 0)
        texts, values, tops, offsets = [], [], [], []
        for token in tokens:
            logprobs = token.event.logprobs
            assert logprobs is not None
            texts.append(token.text)
            values.append(logprobs.logprob)
            top = {self.token_text(token_id): value for token_id, value in logprobs.top}
            top[self.token_text(token.event.token_id)] = logprobs.logprob  # the chosen token always shows
            tops.append(top)
            offsets.append(position)
            position += len(token.text)
        self._offsets[index] = position
        return CompletionLogprobs(tokens=texts, token_logprobs=values, top_logprobs=tops, text_offset=offsets)

    def _body(self, choices: list[CompletionChoice], totals: Usage | None) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=totals)

    def stream_start(self, choice_count: int) -> list[str]:
        if not self.echoed:
            return []
        return [
            self._body([CompletionChoice(index=index, text=self.echoed[index])], None).model_dump_json()
            for index in range(choice_count)
        ]

    def stream_delta(self, delta: ChoiceDelta) -> list[str]:
        if not delta.text and not delta.tokens and delta.finish_reason is None:
            return []
        choice = CompletionChoice(
            index=delta.index,
            text=delta.text,
            logprobs=self._logprobs(delta.index, delta.tokens),
            finish_reason=delta.finish_reason,
        )
        return [self._body([choice], None).model_dump_json()]

    def stream_usage(self, totals: Usage) -> str:
        return self._body([], totals).model_dump_json()

    def complete(self, choices: Sequence[ChoiceDelta], totals: Usage) -> dict[str, Any]:
        return self._body(
            [
                CompletionChoice(
                    index=choice.index,
                    text=(self.echoed[choice.index] if self.echoed else "") + choice.text,
                    logprobs=self._logprobs(choice.index, choice.tokens),
                    finish_reason=choice.finish_reason,
                )
                for choice in choices
            ],
            totals,
        ).model_dump()


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {one_line(data)}\n\n"


async def collect(deltas: AsyncIterator[ChoiceDelta], choice_count: int) -> list[ChoiceDelta]:
    """Each choice as one delta: its text joined, its tokens in order, its finish reason."""
    choices = [ChoiceDelta(index, "") for index in range(choice_count)]
    async for delta in deltas:
        choice = choices[delta.index]
        choice.text += delta.text
        choice.tokens.extend(delta.tokens)
        choice.finish_reason = delta.finish_reason or choice.finish_reason
    return choices


@dataclass(frozen=True)
class StreamPlan:
    """What an SSE response needs besides its deltas."""

    formatter: Formatter
    choice_count: int
    tally: UsageTally
    include_usage: bool


async def sse_stream(
    deltas: AsyncIterator[ChoiceDelta], plan: StreamPlan, on_finish: Callable[[int], None]
) -> AsyncIterator[str]:
    """The SSE body: role chunks, content chunks, finish chunks, optional usage, `[DONE]`.

    An error after the first byte cannot change the status any more; it is sent as an error event.
    """
    try:
        for chunk in plan.formatter.stream_start(plan.choice_count):
            yield sse(chunk)
        async for delta in deltas:
            plan.tally.add(delta)
            for chunk in plan.formatter.stream_delta(delta):
                yield sse(chunk)
        if plan.include_usage:
            yield sse(plan.formatter.stream_usage(plan.tally.usage()))
    except Exception as error:
        # Refusals come before the first byte; what fails later is the engine's or ours.
        failure = error if isinstance(error, APIError) else from_engine_error(error)
        yield sse(failure.body())
    finally:
        on_finish(plan.tally.completion_tokens)
    yield sse("[DONE]")
