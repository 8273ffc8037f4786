"""Requests to prompt token ids: the chat template for chat, plain tokenization or given ids for text."""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from inference.api.errors import APIError
from inference.api.schemas import ChatMessage


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage]) -> list[int]:
    conversation = [{"role": message.role, "content": message.text()} for message in messages]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
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
