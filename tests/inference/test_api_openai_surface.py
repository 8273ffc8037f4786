"""Structured outputs, tool calls, logprobs and sampling controls through the official `openai` client.

The model is the random demo model: whatever it would say, constrained output must still parse and
validate, and forced tool calls must still be well formed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.config import ServerConfig
from inference.tiny_model import TINY_DIMENSIONS, write_random_llama

from .conftest import API_KEY, RunningServer, in_process_server

MESSAGES = [{"role": "user", "content": "Tell me about a person."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PLATE = r"[a-z]{3}-\d{2}"
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def long_context_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with room for tool definitions, which its byte-level tokenizer makes long."""
    out_dir = tmp_path_factory.mktemp("tiny-llama-2k")
    return write_random_llama(out_dir, TINY_DIMENSIONS, max_position_embeddings=2048, initializer_range=0.3)


@pytest.fixture(scope="module")
def tool_server(long_context_model_dir: Path) -> Iterator[RunningServer]:
    config = ServerConfig(
        model_path=long_context_model_dir,
        api_key=API_KEY,
        enable_auto_tool_choice=True,
        tool_call_parser="hermes",
    )
    with in_process_server(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(tool_server: RunningServer) -> openai.OpenAI:
    return tool_server.openai()


@pytest.fixture(scope="module")
def model(tool_server: RunningServer) -> str:
    return tool_server.state.model.name


# Structured outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_validates(client: openai.OpenAI, model: str, seed: int) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, response_format=response_format, max_tokens=60, seed=seed
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_json_mode_gives_an_object_within_a_small_budget(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=12
    )
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_json_schema_on_completions_streams_valid_json(client: openai.OpenAI, model: str) -> None:
    chunks = client.completions.create(
        model=model, prompt="Person:", max_tokens=60, stream=True,
        extra_body={"structured_outputs": {"json": PERSON}},
    )  # fmt: skip
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_regex(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=20, extra_body={"structured_outputs": {"regex": PLATE}}
    )
    assert re.fullmatch(PLATE, completion.choices[0].message.content)


def test_choice_with_the_older_field_name(client: openai.OpenAI, model: str) -> None:
    options = ["positive", "negative", "neutral"]
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=10, extra_body={"guided_choice": options}
    )
    assert completion.choices[0].message.content in options


def test_an_invalid_schema_is_a_400_naming_the_field(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bad"}}},
        )
    assert raised.value.param == "response_format.json_schema"


# Tool calls -------------------------------------------------------------------------------------


def test_required_tool_call_is_well_formed(client: openai.OpenAI, model: str) -> None:
    # Parallel calls allowed: the grammar must not open a second call that max_tokens cannot close.
    completion = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        max_tokens=80,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    for call in choice.message.tool_calls:
        assert call.function.name in {"get_weather", "get_time"}
        arguments = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_named_tool_call_streams_as_tool_call_deltas(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            max_tokens=80,
            stream=True,
        )
    )
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert [delta.function.name for delta in deltas if delta.function.name] == ["get_weather"]
    arguments = "".join(delta.function.arguments or "" for delta in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_multi_turn_tool_conversation(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=80,
        parallel_tool_calls=False,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = client.chat.completions.create(
        model=model, messages=history, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=8
    )
    assert second.choices[0].message.tool_calls is None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_auto_tool_choice_parses_what_the_model_writes(client: openai.OpenAI, model: str) -> None:
    # A regex stands in for a model trained to call tools: it writes text, then a Hermes-style call.
    written = r'Sure\. <tool_call>\n\{"name": "get_time", "arguments": \{\}\}\n</tool_call>'
    request = {"model": model, "messages": MESSAGES, "tools": [WEATHER_TOOL, TIME_TOOL],
               "tool_choice": "auto", "max_tokens": 80,
               "extra_body": {"structured_outputs": {"regex": written}}}  # fmt: skip
    whole = client.chat.completions.create(**request).choices[0]
    assert (whole.message.content, whole.finish_reason) == ("Sure.", "tool_calls")
    assert [(call.function.name, call.function.arguments) for call in whole.message.tool_calls] == [
        ("get_time", "{}")
    ]
    chunks = [chunk for chunk in client.chat.completions.create(**request, stream=True) if chunk.choices]
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert content.strip() == "Sure."
    streamed = [(call.index, call.function.name, call.function.arguments) for call in calls]
    assert streamed == [(0, "get_time", "{}")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_without_a_parser_is_refused(api_server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        api_server.openai().chat.completions.create(
            model=api_server.state.model.name, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="auto"
        )
    assert raised.value.param == "tool_choice"


# Logprobs and sampling controls ------------------------------------------------------------------


def _model_log_softmax(model_dir: Path, token_ids: list[int]) -> torch.Tensor:
    """The next-token log-softmax of the model run by transformers itself, outside the engine."""
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return reference(input_ids=torch.tensor([token_ids])).logits[0, -1].float().log_softmax(-1)


def test_top_logprobs_are_the_models_log_softmax(
    tool_server: RunningServer, model: str, long_context_model_dir: Path
) -> None:
    client = tool_server.openai()
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=1, logprobs=True, top_logprobs=5, temperature=0
    )
    entry = completion.choices[0].logprobs.content[0]
    tokenizer = tool_server.state.model.tokenizer
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reference = _model_log_softmax(long_context_model_dir, prompt_ids)
    top = torch.topk(reference, 5)
    alternatives = [alternative.logprob for alternative in entry.top_logprobs]
    assert alternatives == pytest.approx(top.values.tolist(), abs=1e-4)
    assert entry.logprob == pytest.approx(top.values[0].item(), abs=1e-4)
    assert entry.bytes == list(tool_server.state.engine.token_bytes(int(top.indices[0])))


def test_streamed_logprobs_equal_the_whole_responses(client: openai.OpenAI, model: str) -> None:
    request = {"model": model, "messages": MESSAGES, "max_tokens": 32, "temperature": 0, "logprobs": True,
               "top_logprobs": 2, "extra_body": {"ignore_eos": True}}  # fmt: skip
    whole = client.chat.completions.create(**request).choices[0].logprobs.content
    chunks = client.chat.completions.create(**request, stream=True)
    streamed = [entry for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for entry in chunk.choices[0].logprobs.content]  # fmt: skip
    assert len(streamed) == len(whole) == 32
    assert [entry.model_dump() for entry in streamed] == [entry.model_dump() for entry in whole]


def test_logprob_bytes_are_each_tokens_own_and_join_to_the_output(
    tool_server: RunningServer, model: str
) -> None:
    # The random model writes stray bytes, so some tokens hold part of a character. Special tokens
    # are banned: their text is not part of the output.
    banned = {str(token): -100 for token in tool_server.state.model.tokenizer.all_special_ids}
    completion = tool_server.openai().chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=48, logprobs=True, seed=3, logit_bias=banned
    )
    choice = completion.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == 48 and all(len(entry.bytes) == 1 for entry in entries)  # byte-level tokens
    output = bytes(byte for entry in entries for byte in entry.bytes)
    assert output.decode(errors="replace") == choice.message.content


def test_completion_logprob_tokens_join_to_the_text(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(
        model=model, prompt="Once", max_tokens=40, logprobs=3, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = completion.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.tokens) == 40
    for top, logprob in zip(choice.logprobs.top_logprobs, choice.logprobs.token_logprobs, strict=True):
        assert logprob in top.values()


def test_echo_writes_the_prompt_first(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt="Once upon", max_tokens=4, echo=True)
    assert completion.choices[0].text.startswith("Once upon")


def test_logit_bias_of_minus_100_never_produces_the_token(tool_server: RunningServer, model: str) -> None:
    client = tool_server.openai()
    request = {"model": model, "messages": MESSAGES, "max_tokens": 16, "logprobs": True,
               "extra_body": {"ignore_eos": True}}  # fmt: skip
    greedy = client.chat.completions.create(**request, temperature=0).choices[0].logprobs.content
    banned_bytes = greedy[0].bytes
    banned = next(t for t in range(256) if list(tool_server.state.engine.token_bytes(t)) == banned_bytes)
    biased = client.chat.completions.create(**request, temperature=1.0, n=4, logit_bias={str(banned): -100})
    produced = [entry.bytes for choice in biased.choices for entry in choice.logprobs.content]
    assert len(produced) == 64 and banned_bytes not in produced


def test_min_tokens_holds_off_a_likely_end(tool_server: RunningServer, model: str) -> None:
    client = tool_server.openai()
    eos = tool_server.state.model.tokenizer.eos_token_id
    # A bias makes the end of sequence the likeliest token at every step.
    ending = {"model": model, "prompt": "Once", "max_tokens": 20, "temperature": 0,
              "logit_bias": {str(eos): 50}}  # fmt: skip
    assert client.completions.create(**ending).usage.completion_tokens == 1
    held = client.completions.create(**ending, extra_body={"min_tokens": 6})
    assert (held.usage.completion_tokens, held.choices[0].finish_reason) == (7, "stop")
