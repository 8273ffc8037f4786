"""The official `openai` client against the shared real server: what real users will run."""

from __future__ import annotations

import openai
import pytest

from .conftest import RunningServer, stop_string_from

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


@pytest.fixture
def client(api_server: RunningServer) -> openai.OpenAI:
    return api_server.openai()


@pytest.fixture
def model(api_server: RunningServer) -> str:
    return api_server.state.model.name


def test_chat_completion(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert (completion.choices[0].finish_reason, completion.usage.completion_tokens) == ("length", 6)


def test_chat_stream_text_equals_the_whole_response(client: openai.OpenAI, model: str) -> None:
    whole = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0)
    chunks = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=16, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content


def test_chat_stream_usage(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 5


def test_completions_with_n(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt="Once", n=2, max_tokens=4)
    assert sorted(choice.index for choice in completion.choices) == [0, 1]


def test_completions_stream_with_stop(client: openai.OpenAI, model: str) -> None:
    greedy = {"model": model, "prompt": "Once", "max_tokens": 30, "temperature": 0}
    whole = client.completions.create(**greedy, extra_body={"ignore_eos": True}).choices[0].text
    stop = stop_string_from(whole)
    chunks = client.completions.create(**greedy, stop=stop, stream=True, extra_body={"ignore_eos": True})
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole[: whole.index(stop)]


def test_seeded_sampling_repeats(client: openai.OpenAI, model: str) -> None:
    runs = [
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=12, temperature=0.9, seed=5)
        for _ in range(2)
    ]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


def test_models_list(client: openai.OpenAI, model: str) -> None:
    assert [card.id for card in client.models.list()] == [model]


def test_wrong_key_raises_authentication_error(api_server: RunningServer, model: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        api_server.openai(api_key="wrong").chat.completions.create(model=model, messages=MESSAGES)


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nonexistent", messages=MESSAGES)


def test_invalid_value_raises_bad_request_naming_the_field(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES, top_p=3.0)
    assert raised.value.param == "top_p"
