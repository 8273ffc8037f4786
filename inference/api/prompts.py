"""Requests to prompt token ids: the chat template for chat, plain tokenization or given ids for text.

Text longer than any prompt the context could hold is refused before it is tokenized: tokenizing
megabytes costs seconds and leaves hundreds of megabytes allocated, only to be refused afterwards.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from inference.api.errors import APIError
from inference.api.schemas import ChatMessage, Tool
from inference.engine.request import InvalidRequestError, PromptTooLongError


@functools.cache
def _longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters one token can stand for. A vocabulary entry is spelled with at least as
    many characters as it decodes to (byte-level BPE spells each byte as one character, SentencePiece
    spells the space as one), special tokens included."""
    return max(len(token) for token in tokenizer.get_vocab())


def max_prompt_chars(tokenizer: PreTrainedTokenizerBase, max_model_len: int) -> int:
    """Text longer than this has more tokens than the context holds, whatever its content."""
    return max_model_len * _longest_token_chars(tokenizer)


def _check_prompt_size(text: str, tokenizer: PreTrainedTokenizerBase, max_model_len: int) -> None:
    limit = max_prompt_chars(tokenizer, max_model_len)
    if len(text) > limit:
        raise PromptTooLongError(
            f"the prompt has {len(text)} characters; no prompt over {limit} characters fits the "
            f"context length of {max_model_len} tokens"
        )


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: tool call arguments as objects, as transformers documents."""
    rendered: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)}}
            for call in message.tool_calls
        ]  # fmt: skip
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        rendered["name"] = message.name
    return rendered


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        message = f"messages: tool call arguments are not JSON: {error}"
        raise APIError(400, message, param="messages") from error


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[ChatMessage],
    max_model_len: int,
    tools: Sequence[Tool] | None = None,
) -> list[int]:
    """Raises PromptTooLongError for text that cannot fit, before tokenizing it."""
    conversation = [_template_message(message) for message in messages]
    definitions = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=definitions, tokenize=False, add_generation_prompt=True
        )
    except (TemplateError, ValueError) as error:
        message = f"messages: the chat template rejected them: {error}"
        raise APIError(400, message, param="messages") from error
    _check_prompt_size(text, tokenizer, max_model_len)
    # The template writes the special tokens (BOS and role markers) itself.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def completion_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    max_model_len: int,
    vocab_size: int,
) -> list[list[int]]:
    """Text is tokenized, token ids checked against the vocabulary (before anything decodes them, for
    `echo`); raises PromptTooLongError or InvalidRequestError."""
    for prompt in prompts:
        if isinstance(prompt, str):
            _check_prompt_size(prompt, tokenizer, max_model_len)
        elif max(prompt) >= vocab_size:
            raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab_size})")
    return [list(tokenizer(text)["input_ids"]) if isinstance(text, str) else list(text) for text in prompts]
