"""Tool-call parsing: whole replies and streamed ones, in both formats."""

from __future__ import annotations

import json

import pytest

from inference.api.schemas import Tool
from inference.api.tools import StreamingToolParser, forced_call_grammar, parse_reply, template_tool_parser
from inference.engine.grammar import GrammarCompiler
from inference.tiny_model import CHAT_TEMPLATE, byte_level_tokenizer

from .grammar_walk import random_constrained_output

HERMES = (
    'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
NOOP = {"type": "function", "function": {"name": "noop"}}
LLAMA3 = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {}}'


@pytest.mark.parametrize(("parser", "reply", "content"), [("hermes", HERMES, "Let me check."),
                                                           ("llama3_json", LLAMA3, None)])  # fmt: skip
def test_whole_reply(parser: str, reply: str, content: str | None) -> None:
    parsed = parse_reply(parser, reply)
    assert parsed.content == content
    calls = [(call.function.name, json.loads(call.function.arguments)) for call in parsed.tool_calls]
    assert calls == [("get_weather", {"city": "Oslo"}), ("get_time", {})]


@pytest.mark.parametrize("parser", ["hermes", "llama3_json"])
def test_text_that_is_not_a_call_stays_content(parser: str) -> None:
    reply = "Hello <tool_call>{not json}</tool_call>" if parser == "hermes" else "{not json"
    assert parse_reply(parser, reply).content == reply
    assert parse_reply(parser, reply).tool_calls == []


@pytest.mark.parametrize(("parser", "reply"), [("hermes", HERMES), ("llama3_json", LLAMA3)])
@pytest.mark.parametrize("piece", [1, 3, 7])
def test_streamed_reply_gives_the_same_calls_and_content(parser: str, reply: str, piece: int) -> None:
    streaming = StreamingToolParser(parser)
    content, calls = "", []
    for start in range(0, len(reply), piece):
        text, new_calls = streaming.feed(reply[start : start + piece], final=start + piece >= len(reply))
        content += text
        calls.extend(new_calls)
    whole = parse_reply(parser, reply)
    assert content.strip() == (whole.content or "")
    assert [call.function for call in calls] == [call.function for call in whole.tool_calls]


def test_streamed_plain_text_is_not_held_back_longer_than_a_possible_tag() -> None:
    streaming = StreamingToolParser("hermes")
    assert streaming.feed("Hello <tool", final=False) == ("Hello ", [])
    assert streaming.feed("s are great", final=False) == ("<tools are great", [])


@pytest.mark.parametrize("parser", ["hermes", "llama3_json"])
def test_a_forced_call_is_always_well_formed(parser: str) -> None:
    tokenizer = byte_level_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    tools = [Tool.model_validate(tool) for tool in (WEATHER, NOOP)]
    grammar = compiler.compile(forced_call_grammar(parser, tools, None, parallel=False))
    for seed in range(10):
        output = random_constrained_output(compiler, grammar, 80, seed)
        reply = compiler.tokenizer.decode_bytes(output).decode(errors="replace")
        calls = parse_reply(parser, reply).tool_calls
        assert len(calls) == 1 and calls[0].function.name in {"get_weather", "noop"}


LLAMA3_TEMPLATE = "{{ '<|python_tag|>' }}{{ tool_call | tojson }}"


@pytest.mark.parametrize(
    ("template", "parser"), [(CHAT_TEMPLATE, "hermes"), (LLAMA3_TEMPLATE, "llama3_json"), (None, "hermes")]
)
def test_forced_calls_follow_the_models_template(template: str | None, parser: str) -> None:
    assert template_tool_parser(template) == parser
