"""Overload and abandonment against real servers: a full queue, clients that leave mid-request."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from inference.config import ServerConfig

from .conftest import API_KEY, RunningServer, engine_idle, eventually, in_process_server, metric_value

pytestmark = pytest.mark.slow

# Long enough to still be generating when the test acts on it: the whole context of the demo model.
LONG_STREAM = {"prompt": "tick tock", "max_tokens": 480, "ignore_eos": True, "stream": True}


def first_token(response: httpx.Response) -> Iterator[str]:
    """Wait for the first SSE line. Keep the iterator: dropping it makes httpx drop the connection."""
    lines = response.iter_lines()
    next(lines)
    return lines


@pytest.fixture(scope="module")
def saturated_server(tiny_model_dir) -> Iterator[RunningServer]:
    """One running sequence and no waiting room: a second concurrent request has nowhere to go."""
    config = ServerConfig(model_path=tiny_model_dir, api_key=API_KEY, max_num_seqs=1, max_queue_len=0)
    with in_process_server(config) as running:
        yield running


def test_full_queue_is_429_with_retry_after(saturated_server: RunningServer) -> None:
    with saturated_server.client() as http, http.stream("POST", "/v1/completions", json=LONG_STREAM) as busy:
        _lines = first_token(busy)  # the only slot is taken
        refused = http.post("/v1/completions", json={"prompt": "me too", "max_tokens": 4})
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "queue_full")
    assert int(refused.headers["Retry-After"]) >= 1


def test_full_queue_counts_a_rejection(saturated_server: RunningServer) -> None:
    labels = {"reason": "queue_full"}
    before = metric_value(saturated_server.base_url, "llm_requests_rejected_total", labels)
    with saturated_server.client() as http, http.stream("POST", "/v1/completions", json=LONG_STREAM) as busy:
        _lines = first_token(busy)
        http.post("/v1/completions", json={"prompt": "me too", "max_tokens": 4})
    assert metric_value(saturated_server.base_url, "llm_requests_rejected_total", labels) == before + 1


def test_openai_client_sees_a_rate_limit_error(saturated_server: RunningServer) -> None:
    with saturated_server.client() as http, http.stream("POST", "/v1/completions", json=LONG_STREAM) as busy:
        _lines = first_token(busy)
        with pytest.raises(openai.RateLimitError):
            saturated_server.openai().completions.create(
                model=saturated_server.state.model.name, prompt="me too", max_tokens=4
            )


def _cancelled(server: RunningServer) -> float:
    return metric_value(server.base_url, "llm_requests_cancelled_total")


def test_stream_disconnect_cancels_the_request(api_server: RunningServer) -> None:
    before = _cancelled(api_server)
    with api_server.client() as http, http.stream("POST", "/v1/completions", json=LONG_STREAM) as response:
        _lines = first_token(response)
    # Leaving the block closed the connection mid-stream.
    assert eventually(lambda: _cancelled(api_server) == before + 1)


def test_stream_disconnect_frees_the_kv_cache(api_server: RunningServer) -> None:
    with api_server.client() as http, http.stream("POST", "/v1/completions", json=LONG_STREAM) as response:
        _lines = first_token(response)
        assert api_server.state.engine.stats().kv_cache_usage > 0.0
    assert eventually(lambda: engine_idle(api_server))


def test_kv_usage_gauge_returns_to_zero_after_a_disconnect(api_server: RunningServer) -> None:
    with api_server.client() as http, http.stream("POST", "/v1/completions", json=LONG_STREAM) as response:
        _lines = first_token(response)
    assert eventually(lambda: metric_value(api_server.base_url, "llm_kv_cache_usage_ratio") == 0.0)


def test_non_streamed_request_is_cancelled_when_the_client_gives_up(api_server: RunningServer) -> None:
    before = _cancelled(api_server)
    body = {**LONG_STREAM, "stream": False, "n": 4}
    with api_server.client(timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=body)
    assert eventually(lambda: _cancelled(api_server) == before + 4)
