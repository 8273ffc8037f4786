"""Choice deltas to OpenAI bodies: whole responses, SSE chunks, usage, logprobs; chat and text."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from inference.api.errors import APIError, from_engine_error
from inference.api.generation import ChoiceDelta
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
    PromptTokensDetails,
    Usage,
)
from inference.engine.request import TokenEvent


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
        for event in delta.tokens:
            if event.cached_prompt_tokens is not None:
                cached = max(self._cached_by_prompt.get(prompt, 0), event.cached_prompt_tokens)
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
    """One wire format. `stream_delta` gets only deltas with text or a finish reason; `complete`
    gets each choice as one delta, all of its deltas joined."""

    want_logprobs: bool

    def stream_start(self, choice_count: int) -> list[dict[str, Any]]: ...
    def stream_delta(self, delta: ChoiceDelta) -> dict[str, Any]: ...
    def stream_usage(self, totals: Usage) -> dict[str, Any]: ...
    def complete(self, choices: Sequence[ChoiceDelta], totals: Usage) -> dict[str, Any]: ...


@dataclass
class _Identity:
    id: str
    model: str
    tokenizer: PreTrainedTokenizerBase
    want_logprobs: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class ChatFormatter(_Identity):
    def _logprobs(self, tokens: Sequence[TokenEvent]) -> ChatLogprobs | None:
        if not self.want_logprobs:
            return None
        content = []
        for event in tokens:
            text = self.token_text(event.token_id)
            logprob = event.logprob or 0.0
            content.append(ChatTokenLogprob(token=text, logprob=logprob, bytes=list(text.encode())))
        return ChatLogprobs(content=content)

    def _chunk(self, choices: list[ChatChunkChoice], totals: Usage | None = None) -> dict[str, Any]:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=totals
        ).model_dump()

    def stream_start(self, choice_count: int) -> list[dict[str, Any]]:
        return [
            self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])
            for index in range(choice_count)
        ]

    def stream_delta(self, delta: ChoiceDelta) -> dict[str, Any]:
        content = ChatDelta(content=delta.text) if delta.text else ChatDelta()
        choice = ChatChunkChoice(
            index=delta.index,
            delta=content,
            logprobs=self._logprobs(delta.tokens),
            finish_reason=delta.finish_reason,
        )
        return self._chunk([choice])

    def stream_usage(self, totals: Usage) -> dict[str, Any]:
        return self._chunk([], totals)

    def complete(self, choices: Sequence[ChoiceDelta], totals: Usage) -> dict[str, Any]:
        body = ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                ChatChoice(
                    index=choice.index,
                    message=AssistantMessage(content=choice.text),
                    logprobs=self._logprobs(choice.tokens),
                    finish_reason=choice.finish_reason,
                )
                for choice in choices
            ],
            usage=totals,
        )
        return body.model_dump()


class CompletionFormatter(_Identity):
    def _logprobs(self, tokens: Sequence[TokenEvent]) -> CompletionLogprobs | None:
        if not self.want_logprobs:
            return None
        texts = [self.token_text(event.token_id) for event in tokens]
        values = [event.logprob or 0.0 for event in tokens]
        offsets, position = [], 0
        for text in texts:
            offsets.append(position)
            position += len(text)
        return CompletionLogprobs(
            tokens=texts,
            token_logprobs=values,
            top_logprobs=[{text: value} for text, value in zip(texts, values, strict=True)],
            text_offset=offsets,
        )

    def _body(self, choices: list[CompletionChoice], totals: Usage | None) -> dict[str, Any]:
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=totals
        ).model_dump()

    def stream_start(self, choice_count: int) -> list[dict[str, Any]]:
        return []

    def stream_delta(self, delta: ChoiceDelta) -> dict[str, Any]:
        choice = CompletionChoice(
            index=delta.index,
            text=delta.text,
            logprobs=self._logprobs(delta.tokens),
            finish_reason=delta.finish_reason,
        )
        return self._body([choice], None)

    def stream_usage(self, totals: Usage) -> dict[str, Any]:
        return self._body([], totals)

    def complete(self, choices: Sequence[ChoiceDelta], totals: Usage) -> dict[str, Any]:
        return self._body(
            [
                CompletionChoice(
                    index=choice.index,
                    text=choice.text,
                    logprobs=self._logprobs(choice.tokens),
                    finish_reason=choice.finish_reason,
                )
                for choice in choices
            ],
            totals,
        )


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def collect(deltas: AsyncIterator[ChoiceDelta], choice_count: int) -> list[ChoiceDelta]:
    """Each choice as one delta: its text joined, its tokens in order, its finish reason."""
    choices = [ChoiceDelta(index, "") for index in range(choice_count)]
    async for delta in deltas:
        choice = choices[delta.index]
        choice.text += delta.text
        choice.tokens.extend(delta.tokens)
        choice.finish_reason = delta.finish_reason or choice.finish_reason
    return choices


async def sse_stream(
    deltas: AsyncIterator[ChoiceDelta],
    formatter: Formatter,
    choice_count: int,
    tally: UsageTally,
    include_usage: bool,
    on_finish: Callable[[int], None],
    prompt_param: str,
) -> AsyncIterator[str]:
    """The SSE body: role chunks, content chunks, finish chunks, optional usage, `[DONE]`.

    An error after the first byte cannot change the status any more; it is sent as an error event.
    """
    try:
        for chunk in formatter.stream_start(choice_count):
            yield sse(chunk)
        async for delta in deltas:
            tally.add(delta)
            # A delta still holding back a partial character or a possible stop string says nothing yet.
            if delta.text or delta.finish_reason is not None:
                yield sse(formatter.stream_delta(delta))
        if include_usage:
            yield sse(formatter.stream_usage(tally.usage()))
    except Exception as error:
        failure = error if isinstance(error, APIError) else from_engine_error(error, prompt_param)
        yield sse(failure.body())
    finally:
        on_finish(tally.completion_tokens)
    yield sse("[DONE]")
