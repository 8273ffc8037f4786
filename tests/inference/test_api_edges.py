"""The HTTP edge against hostile and unlucky input, on real servers on loopback.

Each test is one promise: a clear 4xx in OpenAI's shape (never a 500 or a dropped connection), bounded
bodies, connections and label values, and no request able to take the engine or another request down.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import replace

import httpx
import jsonschema
import pytest

from inference import metrics
from inference.api.prompts import max_prompt_chars
from inference.config import ServerConfig
from inference.server import build_server

from .conftest import API_KEY, RunningServer, in_process_server

pytestmark = pytest.mark.slow

ERROR_FIELDS = {"message", "type", "param", "code"}
# How long a test waits for the server to act on a timeout of about a second: generous, since it only
# bounds a failing test, never what a passing one measures.
SOCKET_WAIT_SECONDS = 20.0
EDGE = {
    "max_request_body_bytes": 64 * 1024,
    "timeout_request_headers": 1.0,
    "timeout_request_body": 1.0,
    "timeout_keep_alive": 1.0,
    "max_num_seqs": 2,
    "max_queue_len": 2,
}


@pytest.fixture(scope="module")
def edge_server(tiny_model_dir) -> Iterator[RunningServer]:
    """Small bounds, so that each is reached with little traffic."""
    with in_process_server(ServerConfig(model_path=tiny_model_dir, api_key=API_KEY, **EDGE)) as running:
        yield running


@pytest.fixture
def http(edge_server: RunningServer) -> Iterator[httpx.Client]:
    with edge_server.client() as client:
        yield client


def raw_json(client: httpx.Client, path: str, body: str) -> httpx.Response:
    """POST JSON text as written: httpx cannot encode a lone surrogate itself."""
    return client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


def assert_error(response: httpx.Response, status: int, **fields: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert {name: error[name] for name in fields} == fields
    return error


@contextlib.contextmanager
def raw_connection(server: RunningServer) -> Iterator[socket.socket]:
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=SOCKET_WAIT_SECONDS) as connection:
        yield connection


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it never does."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


# 1. Sampling values that underflow ---------------------------------------------------------------


@pytest.mark.parametrize("extreme", [{"top_p": 1e-300}, {"temperature": 1e-45}])
def test_extreme_sampling_values_are_served(
    http: httpx.Client, edge_server: RunningServer, extreme: dict
) -> None:
    response = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, **extreme})
    assert response.status_code == 200, response.text
    assert http.get("/health/ready").status_code == 200


def test_a_temperature_below_the_greedy_threshold_is_greedy(http: httpx.Client) -> None:
    body = {"prompt": "Greedy or not", "max_tokens": 12, "ignore_eos": True}
    greedy = http.post("/v1/completions", json={**body, "temperature": 0}).json()
    tiny = http.post("/v1/completions", json={**body, "temperature": 1e-45}).json()
    assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"]


# 2. Over-length prompts are refused before they are tokenized --------------------------------------


class CountingTokenizer:
    """The server's own tokenizer, noting the longest text it was asked to encode."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.longest_text = 0

    def __call__(self, text, *args, **kwargs):
        self.longest_text = max(self.longest_text, len(text))
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


@pytest.fixture
def counting_tokenizer(edge_server: RunningServer) -> Iterator[CountingTokenizer]:
    state = edge_server.state
    original = state.model
    counting = CountingTokenizer(original.tokenizer)
    state.model = replace(original, tokenizer=counting)
    try:
        yield counting
    finally:
        state.model = original


@pytest.mark.parametrize(
    ("path", "param"), [("/v1/completions", "prompt"), ("/v1/chat/completions", "messages")]
)
def test_a_prompt_over_any_context_is_refused_before_tokenizing(
    http: httpx.Client,
    edge_server: RunningServer,
    counting_tokenizer: CountingTokenizer,
    path: str,
    param: str,
) -> None:
    model = edge_server.state.model
    text = "x" * (max_prompt_chars(model.tokenizer, model.max_model_len) + 1)
    body = {"prompt": text} if param == "prompt" else {"messages": [{"role": "user", "content": text}]}
    response = http.post(path, json={**body, "max_tokens": 1})
    assert_error(response, 400, param=param, code="context_length_exceeded")
    assert counting_tokenizer.longest_text < len(text)


def test_echo_of_token_ids_outside_the_vocabulary_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"prompt": [1, 2**63], "echo": True, "max_tokens": 1})
    assert_error(response, 400, param="prompt")


# 3. Text that is not Unicode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", '{"prompt": "a\\ud800b", "max_tokens": 1}', "prompt"),
        ("/v1/completions", '{"prompt": "hi", "model": "\\udfff"}', "model"),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
            "messages.0.content",
        ),
        ("/v1/completions", '{"prompt": ["ok", "a\\udc00"], "max_tokens": 1}', "prompt.1"),
    ],
)
def test_a_lone_surrogate_is_400_and_the_connection_stays_open(
    http: httpx.Client, path: str, body: str, param: str
) -> None:
    response = raw_json(http, path, body)
    assert_error(response, 400, param=param)
    assert response.headers.get("connection") != "close"


@pytest.mark.parametrize(
    ("prompt", "token_ids"), [([1, 2.0, 3], [1, 2, 3]), ([[1, 2.0], [3.0]], [[1, 2], [3]])]
)
def test_integral_floats_among_token_ids_are_token_ids(http: httpx.Client, prompt, token_ids) -> None:
    # JSON Schema's integers include 2.0; echo shows the prompts as the server read them.
    def echoed(prompt: list) -> list[str]:
        body = {"prompt": prompt, "echo": True, "max_tokens": 1, "temperature": 0.0}
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        return [choice["text"] for choice in response.json()["choices"]]

    assert echoed(prompt) == echoed(token_ids)


@pytest.mark.parametrize(
    "prompt", [[1, 2.5], [[1], [2.5]], [1, -1], [True, 2], [1, "a"], ["a", ""], [[1], []]]
)
def test_a_prompt_list_with_a_fraction_a_negative_a_boolean_a_mix_or_an_empty_item_is_400(
    http: httpx.Client, prompt
) -> None:
    response = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    assert_error(response, 400, param="prompt")


# 4. Request body size --------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_parsing(http: httpx.Client) -> None:
    padding = "x" * EDGE["max_request_body_bytes"]
    response = http.post("/v1/completions", json={"prompt": "hi", "padding": padding})
    assert_error(response, 413, code="request_too_large")


def test_a_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(EDGE["max_request_body_bytes"] // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    response = http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, code="request_too_large")


# 5. Connections are bounded in time and number -----------------------------------------------------


def test_trickled_headers_are_cut_off(edge_server: RunningServer) -> None:
    with raw_connection(edge_server) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert read_until_closed(connection) == b""


def test_a_silent_connection_is_closed(edge_server: RunningServer) -> None:
    with raw_connection(edge_server) as connection:
        assert read_until_closed(connection) == b""


def test_a_stalled_body_is_408(edge_server: RunningServer) -> None:
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: 100\r\n\r\n"
    )
    with raw_connection(edge_server) as connection:
        connection.sendall(head.encode() + b'{"prompt": ')
        status_line = read_until_closed(connection).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"408"


def test_an_idle_keep_alive_connection_is_closed(edge_server: RunningServer) -> None:
    with raw_connection(edge_server) as connection:
        connection.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = read_until_closed(connection)
    assert response.startswith(b"HTTP/1.1 200")


def test_the_keep_alive_timeout_is_configurable() -> None:
    assert build_server(ServerConfig(timeout_keep_alive=7.5)).config.timeout_keep_alive == 7.5


def test_the_keep_alive_default_outlasts_the_clients_idle_timeout() -> None:
    # httpx and openai drop pooled connections after 5 s idle: the server must wait longer, or a
    # client can send on a socket the server is closing.
    assert ServerConfig().timeout_keep_alive > httpx.Limits().keepalive_expiry


def test_connections_over_the_limit_get_429(tiny_model_dir) -> None:
    config = ServerConfig(model_path=tiny_model_dir, limit_concurrency=2)
    with in_process_server(config) as server, raw_connection(server), raw_connection(server):
        with server.client(api_key=None) as client:
            response = client.get("/health/live")
        assert_error(response, 429, code="too_many_connections")
        assert response.headers["retry-after"] == "1"


# 6. Label values are bounded --------------------------------------------------------------------------


def test_made_up_methods_share_one_label_value(http: httpx.Client, edge_server: RunningServer) -> None:
    for index in range(20):
        http.request(f"MADEUP{index}", "/health/live")
    text = httpx.get(f"{edge_server.base_url}/metrics").text
    methods = {line.split('method="', 1)[1].split('"', 1)[0] for line in text.splitlines()
               if line.startswith("http_requests_total{")}
    assert metrics.OTHER in methods
    assert methods <= metrics.LABEL_DOMAINS["method"].values | {metrics.OTHER}


def test_every_label_of_the_catalog_is_bounded() -> None:
    labels = {label for spec in metrics.CATALOG for label in spec.labels}
    assert labels <= set(metrics.LABEL_DOMAINS)


# 8. More choices than the server could ever hold --------------------------------------------------


def test_more_choices_than_running_and_queued_slots_is_400_naming_n(http: httpx.Client) -> None:
    n = EDGE["max_num_seqs"] + EDGE["max_queue_len"] + 1
    response = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "n": n})
    assert_error(response, 400, param="n")


# 9. The client's request id is the client's -------------------------------------------------------


def test_two_requests_with_the_same_request_id_both_run(http: httpx.Client) -> None:
    headers = {"X-Request-ID": "client-chosen-id"}
    running = {"prompt": "first", "max_tokens": 64, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=running, headers=headers) as first:
        lines = first.iter_lines()
        next(lines)  # the first request is in the engine now
        second = http.post("/v1/completions", json={"prompt": "second", "max_tokens": 2}, headers=headers)
        first_status = first.status_code
    assert (first_status, second.status_code) == (200, 200), second.text
    assert second.headers["x-request-id"] == "client-chosen-id"


# 11. The OpenAPI document ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(edge_server: RunningServer) -> dict:
    response = httpx.get(f"{edge_server.base_url}/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_openapi_lists_400_and_never_422(openapi: dict) -> None:
    operations = [operation for path in openapi["paths"].values() for operation in path.values()]
    assert not any("422" in operation["responses"] for operation in operations)
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert "400" in openapi["paths"][path]["post"]["responses"]


@pytest.mark.parametrize("prompt", [[], "", [[]], [""], {"text": "hi"}])
def test_openapi_refuses_the_prompts_the_server_refuses(
    openapi: dict, http: httpx.Client, prompt: object
) -> None:
    schema = openapi["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(prompt, schema)
    assert http.post("/v1/completions", json={"prompt": prompt}).status_code == 400


def test_openapi_needs_no_key_and_declares_the_bearer_scheme(openapi: dict) -> None:
    assert openapi["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert openapi["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
