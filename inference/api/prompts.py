"""Requests to prompt token ids: the chat template for chat, plain tokenization or given ids for text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from inference.api.errors import APIError
from inference.api.schemas import ChatMessage, Tool


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
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage], tools: Sequence[Tool] | None = None
) -> list[int]:
    conversation = [_template_message(message) for message in messages]
    definitions = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=definitions, tokenize=False, add_generation_prompt=True
        )
    except (TemplateError, ValueError) as error:
        message = f"messages: the chat template rejected them: {error}"
        raise APIError(400, message, param="messages") from error
    # The template writes the special tokens (BOS and role markers) itself.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def completion_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str] | Sequence[Sequence[int]]
) -> list[list[int]]:
    """Text is tokenized; token ids pass as given (the engine checks them against the vocabulary)."""
    return [list(tokenizer(text)["input_ids"]) if isinstance(text, str) else list(text) for text in prompts]
