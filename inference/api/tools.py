"""Tool calls: the grammar that forces one, and the parsers that find them in a model's output.

Two output formats, chosen by `--tool-call-parser` as in vLLM: `hermes` (Hermes, Qwen and the
demo model: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks after any text) and
`llama3_json` (Llama 3.x: the whole reply is `{"name": ..., "parameters": {...}}`, several joined
by `;`). `tool_choice` `required` or a named function constrains the output to that format with
the structured-output machinery, so the call is always well formed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inference.api.schemas import FunctionCall, Tool, ToolCall
from inference.engine.grammar import GrammarSpec

ToolCallParserName = Literal["hermes", "llama3_json"]
TOOL_CALL_PARSERS: tuple[ToolCallParserName, ...] = ("hermes", "llama3_json")

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_HERMES_BLOCK = re.compile(re.escape(_HERMES_OPEN) + r"\s*(.*?)\s*" + re.escape(_HERMES_CLOSE), re.DOTALL)
_LLAMA_PYTHON_TAG = "<|python_tag|>"
# Forced calls are compact JSON: no room for a model to wander in whitespace.
_COMPACT = {"x-guidance": {"whitespace_flexible": False}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _tool_call(name: object, arguments: object) -> ToolCall | None:
    if not isinstance(name, str) or not isinstance(arguments, dict | str):
        return None
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=text))


def _hermes_calls(text: str) -> list[ToolCall] | None:
    calls = []
    for block in _HERMES_BLOCK.findall(text):
        try:
            payload = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        call = _tool_call(payload.get("name"), payload.get("arguments", {}))
        if call is None:
            return None
        calls.append(call)
    return calls


def _llama3_calls(text: str) -> list[ToolCall] | None:
    text = text.strip().removeprefix(_LLAMA_PYTHON_TAG).strip()
    decoder = json.JSONDecoder()
    calls, position = [], 0
    while position < len(text):
        try:
            payload, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        call = _tool_call(payload.get("name"), payload.get("parameters", payload.get("arguments", {})))
        if call is None:
            return None
        calls.append(call)
        position = end
        while position < len(text) and text[position] in " \n\t;":
            position += 1
    return calls


@dataclass(frozen=True)
class ParsedReply:
    content: str | None
    tool_calls: list[ToolCall]


def parse_reply(parser: ToolCallParserName, text: str) -> ParsedReply:
    """The calls in a whole reply, and the text around them; text that is not a well-formed call
    stays content."""
    if parser == "hermes":
        start = text.find(_HERMES_OPEN)
        calls = _hermes_calls(text) if start >= 0 else None
        if not calls:
            return ParsedReply(text, [])
        return ParsedReply(text[:start].strip() or None, calls)
    calls = _llama3_calls(text) if text.strip() else None
    return ParsedReply(None, calls) if calls else ParsedReply(text, [])


class StreamingToolParser:
    """Splits a streamed reply into content to show now and calls once each is complete.

    Text that may begin a call is held back; a call is released whole when it closes, as one
    `delta.tool_calls` entry with its name and all its arguments.
    """

    def __init__(self, parser: ToolCallParserName) -> None:
        self._parser = parser
        self._text = ""
        self._shown = 0  # text up to here went out as content
        self._parsed = 0  # text up to here was a call already released
        self.calls = 0

    def feed(self, text: str, *, final: bool) -> tuple[str, list[ToolCall]]:
        self._text += text
        if self._parser == "llama3_json":
            return self._feed_whole_reply(final)
        return self._feed_blocks(final)

    def _feed_whole_reply(self, final: bool) -> tuple[str, list[ToolCall]]:
        # A Llama 3 call is the whole reply: decide on its first character, parse it at the end.
        head = self._text.lstrip()
        looks_like_call = head[:1] in ("{", "<")
        if not head and not final:
            return "", []
        if not looks_like_call:
            return self._show(len(self._text)), []
        if not final:
            return "", []
        parsed = parse_reply("llama3_json", self._text)
        if not parsed.tool_calls:
            return self._show(len(self._text)), []
        self.calls += len(parsed.tool_calls)
        self._shown = len(self._text)
        return "", parsed.tool_calls

    def _feed_blocks(self, final: bool) -> tuple[str, list[ToolCall]]:
        calls: list[ToolCall] = []
        content = ""
        while True:
            start = self._text.find(_HERMES_OPEN, self._parsed)
            if start < 0:
                break
            end = self._text.find(_HERMES_CLOSE, start)
            if end < 0:
                break
            block_end = end + len(_HERMES_CLOSE)
            block_calls = _hermes_calls(self._text[start:block_end])
            if not block_calls:
                break
            if not calls and not self.calls:
                content = self._show(start).rstrip()
            calls.extend(block_calls)
            self._parsed = self._shown = block_end
        self.calls += len(calls)
        if calls:
            return content, calls
        if self.calls:
            return "", []  # after a call, only more calls (or nothing) are expected
        if final:
            return self._show(len(self._text)), []
        return self._show(_safe_end(self._text, _HERMES_OPEN)), []

    def _show(self, end: int) -> str:
        shown = self._text[self._shown : end]
        self._shown = max(self._shown, end)
        return shown


def _safe_end(text: str, marker: str) -> int:
    """Where `text` may be shown up to: before `marker`, or before a tail that may begin it."""
    found = text.find(marker)
    if found >= 0:
        return found
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return len(text) - length
    return len(text)


def forced_call_grammar(
    parser: ToolCallParserName, tools: Sequence[Tool], name: str | None, parallel: bool
) -> GrammarSpec:
    """Output that is one call (several with `parallel`) of the named tool, or of any tool."""
    chosen = [tool for tool in tools if name is None or tool.function.name == name]
    arguments_key = "parameters" if parser == "llama3_json" else "arguments"
    one_call: dict[str, Any] = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.function.name},
                    arguments_key: tool.function.parameters,
                },
                "required": ["name", arguments_key],
                "additionalProperties": False,
            }
            for tool in chosen
        ],
        **_COMPACT,
    }
    if parser == "llama3_json":
        return GrammarSpec.json_schema(one_call)
    repeat = ' ("\\n" call)*' if parallel else ""
    call = f'call: "{_HERMES_OPEN}\\n" %json {json.dumps(one_call)} "\\n{_HERMES_CLOSE}"'
    return GrammarSpec("lark", f"start: call{repeat}\n{call}")
