"""The OpenAI API over plain HTTP (httpx) against the shared real server on loopback."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
import torch

from inference.logging import ACCESS_LOGGER
from inference.model_loading import LoadedModel

from .conftest import RunningServer, eventually, metric_value, sse_payloads, stop_string_from
from .greedy_reference import load_reference

CHAT = {"messages": [{"role": "user", "content": "Say something."}]}


def chat(client: httpx.Client, **fields) -> dict:
    response = client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def complete(client: httpx.Client, **fields) -> dict:
    response = client.post("/v1/completions", json={"prompt": "Once upon a time", **fields})
    assert response.status_code == 200, response.text
    return response.json()


def stream(client: httpx.Client, path: str, body: dict) -> list[dict | str]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_payloads(response.iter_lines())


# Responses ---------------------------------------------------------------------------------------


def test_chat_completion_has_the_openai_shape(client: httpx.Client) -> None:
    body = chat(client, max_tokens=8)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}


def test_chat_prompt_tokens_count_the_chat_template(client: httpx.Client, api_server: RunningServer) -> None:
    tokenizer = api_server.state.model.tokenizer
    templated = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False, add_generation_prompt=True)
    expected = len(tokenizer(templated, add_special_tokens=False)["input_ids"])
    assert chat(client, max_tokens=4)["usage"]["prompt_tokens"] == expected


def test_length_finish_generates_exactly_max_tokens(client: httpx.Client) -> None:
    body = complete(client, max_tokens=7, ignore_eos=True)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7


def test_usage_total_is_prompt_plus_completion(client: httpx.Client) -> None:
    usage = complete(client, max_tokens=5)["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_completion_matches_transformers_generate(
    client: httpx.Client, tiny_loaded: LoadedModel, tiny_model_dir: Path
) -> None:
    tokenizer = tiny_loaded.tokenizer
    prompt_ids = tokenizer("The engine and transformers agree")["input_ids"]
    # A model of its own: an engine built earlier on the shared `tiny_loaded` switched its attention
    # to the paged one, which runs only inside engine steps.
    reference = load_reference(tiny_model_dir)
    with torch.no_grad():
        prompt = torch.tensor([prompt_ids])
        output = reference.generate(
            prompt, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    expected = tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True)
    body = complete(client, prompt=prompt_ids, max_tokens=24, temperature=0)
    assert body["choices"][0]["text"] == expected


def test_token_id_prompt_equals_text_prompt(client: httpx.Client, api_server: RunningServer) -> None:
    text = "Same prompt, two spellings"
    ids = api_server.state.model.tokenizer(text)["input_ids"]
    as_text = complete(client, prompt=text, max_tokens=12, temperature=0)
    as_ids = complete(client, prompt=ids, max_tokens=12, temperature=0)
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"]


def test_batch_of_prompts_gives_n_choices_per_prompt(client: httpx.Client) -> None:
    body = complete(client, prompt=["first prompt", "second"], n=2, max_tokens=3)
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]


def test_n_choices_are_indexed(client: httpx.Client) -> None:
    body = chat(client, n=3, max_tokens=4)
    assert sorted(choice["index"] for choice in body["choices"]) == [0, 1, 2]


def test_same_seed_gives_the_same_output(client: httpx.Client) -> None:
    first = complete(client, temperature=1.0, seed=1234, max_tokens=24)
    second = complete(client, temperature=1.0, seed=1234, max_tokens=24)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]


def test_n_with_a_seed_uses_consecutive_seeds(client: httpx.Client) -> None:
    together = complete(client, temperature=1.0, seed=77, n=2, max_tokens=16)
    apart = [complete(client, temperature=1.0, seed=seed, max_tokens=16) for seed in (77, 78)]
    assert [choice["text"] for choice in together["choices"]] == [one["choices"][0]["text"] for one in apart]


def test_stop_string_ends_the_output_before_it(client: httpx.Client) -> None:
    free = complete(client, temperature=0, max_tokens=40, ignore_eos=True)["choices"][0]["text"]
    stop = stop_string_from(free)
    choice = complete(client, temperature=0, max_tokens=40, ignore_eos=True, stop=[stop])["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (free[: free.index(stop)], "stop")


def test_streamed_stop_string_never_reaches_the_client(client: httpx.Client) -> None:
    free = complete(client, temperature=0, max_tokens=40, ignore_eos=True)["choices"][0]["text"]
    stop = stop_string_from(free)
    body = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 40, "ignore_eos": True}
    body["stop"] = stop
    chunks = [payload for payload in stream(client, "/v1/completions", body) if isinstance(payload, dict)]
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == free[: free.index(stop)]


def test_chat_logprobs_cover_every_token(client: httpx.Client) -> None:
    body = chat(client, max_tokens=6, logprobs=True)
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    assert all(entry["logprob"] <= 0.0 for entry in entries)


# Streaming ---------------------------------------------------------------------------------------


def test_chat_stream_starts_with_the_role_and_ends_with_done(client: httpx.Client) -> None:
    payloads = stream(client, "/v1/chat/completions", {**CHAT, "max_tokens": 6})
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1] == "[DONE]"


def test_chat_stream_carries_the_finish_reason(client: httpx.Client) -> None:
    payloads = stream(client, "/v1/chat/completions", {**CHAT, "max_tokens": 6, "ignore_eos": True})
    reasons = [p["choices"][0]["finish_reason"] for p in payloads[:-1] if p["choices"][0]["finish_reason"]]
    assert reasons == ["length"]


def test_streamed_text_equals_the_whole_response(client: httpx.Client) -> None:
    whole = chat(client, max_tokens=20, temperature=0)["choices"][0]["message"]["content"]
    payloads = stream(client, "/v1/chat/completions", {**CHAT, "max_tokens": 20, "temperature": 0})
    streamed = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1])
    assert streamed == whole


def test_stream_usage_chunk_when_asked(client: httpx.Client) -> None:
    body = {**CHAT, "max_tokens": 5, "ignore_eos": True, "stream_options": {"include_usage": True}}
    last = stream(client, "/v1/chat/completions", body)[-2]
    assert (last["choices"], last["usage"]["completion_tokens"]) == ([], 5)


def test_streamed_n_choices_each_finish(client: httpx.Client) -> None:
    payloads = stream(client, "/v1/completions", {"prompt": "abc", "n": 3, "max_tokens": 4})
    finished = sorted(p["choices"][0]["index"] for p in payloads[:-1] if p["choices"][0]["finish_reason"])
    assert finished == [0, 1, 2]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_stream_lines_survive_unicode_line_separators(client: httpx.Client, separator: str) -> None:
    """httpx's and requests' line iterators split on every separator `str.splitlines` knows.

    JSON may carry these three raw inside a string; a chunk that did arrived cut in two.
    """
    prompt = f"one{separator}two"
    payloads = stream(client, "/v1/completions", {"prompt": prompt, "echo": True, "max_tokens": 2})
    assert payloads[0]["choices"][0]["text"].startswith(prompt)


# Errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "temperature": 5}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "top_p": 0}, "top_p"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "seed": -1}, "seed"),
        ("/v1/chat/completions", {**CHAT, "stop": [""]}, "stop"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "many"}, "max_tokens"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ("/v1/completions", {"prompt": {"text": "hi"}}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "suffix": "!"}, "suffix"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 6}, "logprobs"),
        ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "presence_penalty": 2.5}, "presence_penalty"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"5": 101}}, "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "audio": {"voice": "alloy"}}, "audio"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"99999": 1}}, "logit_bias"),
        ("/v1/completions", {"prompt": "hi", "stop_token_ids": [-1]}, "stop_token_ids"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {**CHAT, "functions": [{"name": "f"}]}, "functions"),
        ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema"}}, "response_format"),
        ("/v1/chat/completions", {**CHAT, "structured_outputs": {"regex": "(["}}, "structured_outputs.regex"),
    ],
)
def test_invalid_values_are_400_naming_the_field(
    client: httpx.Client, path: str, body: dict, param: str
) -> None:
    response = client.post(path, json=body)
    error = response.json()["error"]
    assert (response.status_code, error["param"], error["type"]) == (400, param, "invalid_request_error")
    assert param in error["message"]


def test_body_that_is_not_json_is_400(client: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    response = client.post("/v1/completions", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_prompt_filling_the_context_without_max_tokens_is_400_about_the_prompt(
    client: httpx.Client, api_server: RunningServer
) -> None:
    before = metric_value(api_server.base_url, "llm_requests_rejected_total", {"reason": "prompt_too_long"})
    exactly = [65] * api_server.state.model.max_model_len
    response = client.post("/v1/completions", json={"prompt": exactly, "max_tokens": None})
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, "context_length_exceeded", "prompt")
    assert "max_tokens" not in error["message"]
    after = metric_value(api_server.base_url, "llm_requests_rejected_total", {"reason": "prompt_too_long"})
    assert after == before + 1


def test_unknown_fields_are_ignored_with_one_warning(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="inference.api.v1"):
        response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "frobnicate": 1,
                                                         "user": "u", "wibble": True})  # fmt: skip
    assert response.status_code == 200
    warnings = [record.getMessage() for record in caplog.records if record.name == "inference.api.v1"]
    assert warnings == ["ignoring unknown request fields: frobnicate, wibble"]


def test_prompt_over_the_context_length_is_400(client: httpx.Client, api_server: RunningServer) -> None:
    too_long = "x" * api_server.state.model.max_model_len
    response = client.post("/v1/completions", json={"prompt": too_long, "max_tokens": 1})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "context_length_exceeded")


def test_token_id_outside_the_vocabulary_is_400(client: httpx.Client, api_server: RunningServer) -> None:
    vocab_size = api_server.state.model.vocab_size
    response = client.post("/v1/completions", json={"prompt": [1, vocab_size], "max_tokens": 1})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "prompt")


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")


def test_unknown_route_is_404_in_the_error_shape(client: httpx.Client) -> None:
    response = client.get("/v1/no-such-route")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_wrong_method_is_405_in_the_error_shape(client: httpx.Client) -> None:
    response = client.get("/v1/chat/completions")
    assert (response.status_code, response.json()["error"]["type"]) == (405, "invalid_request_error")


# API key -----------------------------------------------------------------------------------------


def test_missing_api_key_is_401(api_server: RunningServer) -> None:
    with api_server.client(api_key=None) as anonymous:
        response = anonymous.post("/v1/chat/completions", json=CHAT)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")


def test_wrong_api_key_is_401(api_server: RunningServer) -> None:
    with api_server.client(api_key="not-the-key") as intruder:
        assert intruder.get("/v1/models").status_code == 401


def test_api_key_is_checked_before_the_body(api_server: RunningServer) -> None:
    with api_server.client(api_key=None) as anonymous:
        response = anonymous.post("/v1/completions", content=b"{not json")
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/metrics"])
def test_probes_and_metrics_need_no_key(api_server: RunningServer, path: str) -> None:
    with api_server.client(api_key=None) as anonymous:
        assert anonymous.get(path).status_code == 200


# Models, health, metrics, logs -------------------------------------------------------------------


def test_models_lists_the_served_model(client: httpx.Client, api_server: RunningServer) -> None:
    body = client.get("/v1/models").json()
    assert [card["id"] for card in body["data"]] == [api_server.state.model.name]


def test_ready_server_reports_ready(client: httpx.Client) -> None:
    assert client.get("/health/ready").json() == {"status": "ready"}


def test_http_metrics_use_the_route_template(client: httpx.Client, api_server: RunningServer) -> None:
    labels = {"method": "GET", "route": "/v1/models", "status": "200"}
    before = metric_value(api_server.base_url, "http_requests_total", labels)
    client.get("/v1/models")
    assert metric_value(api_server.base_url, "http_requests_total", labels) == before + 1


def test_the_server_watches_its_event_loop(api_server: RunningServer) -> None:
    count = "llm_event_loop_lag_seconds_count"
    before = metric_value(api_server.base_url, count)
    assert eventually(lambda: metric_value(api_server.base_url, count) >= before + 3)  # a timer every 0.1 s


def test_unmatched_paths_share_one_route_label(client: httpx.Client, api_server: RunningServer) -> None:
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    before = metric_value(api_server.base_url, "http_requests_total", labels)
    client.get("/v1/random-path-1")
    client.get("/v1/random-path-2")
    assert metric_value(api_server.base_url, "http_requests_total", labels) == before + 2


def test_one_access_log_line_per_request(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    body = {"prompt": "log me", "max_tokens": 3, "ignore_eos": True}
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        request_id = client.post("/v1/completions", json=body).headers["x-request-id"]
        # The line is written after the last byte is sent, so it may trail the response a little.
        deadline = time.monotonic() + 10
        while not _access_lines(caplog, request_id) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [(line.status, line.completion_tokens) for line in _access_lines(caplog, request_id)] == [(200, 3)]


def _access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "request_id", None) == request_id]
