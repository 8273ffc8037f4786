"""A quantized checkpoint behind the real server: it answers, and it says which scheme it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.config import ServerConfig
from inference.engine.core import EngineCore
from inference.metrics import MODEL_INFO
from inference.model_loading import load_model
from inference.quantize import quantize_directory

from .conftest import RunningServer, in_process_server, metric_value

SCHEME = "int8-weight-only"


@pytest.fixture(scope="module")
def quantized_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_directory(tiny_model_dir, tmp_path_factory.mktemp("served") / "tiny-int8", SCHEME)


@pytest.fixture(scope="module")
def quantized_server(quantized_dir: Path) -> Iterator[RunningServer]:
    with in_process_server(ServerConfig(model_path=quantized_dir)) as running:
        yield running


def test_engine_warm_up_generates_a_token_with_the_quantized_model(quantized_dir: Path) -> None:
    config = ServerConfig(model_path=quantized_dir, max_num_seqs=1, kv_cache_memory_bytes=1 << 24)
    loaded = load_model(config)
    token = EngineCore(loaded, config).warm_up()
    assert 0 <= token < loaded.model.get_output_embeddings().out_features


@pytest.mark.slow
def test_models_endpoint_reports_the_scheme(quantized_server: RunningServer) -> None:
    with quantized_server.client(api_key=None) as client:
        card = client.get("/v1/models").json()["data"][0]
    assert (card["id"], card["quantization"]) == ("tiny-int8", SCHEME)


@pytest.mark.slow
def test_model_info_metric_carries_the_scheme_label(quantized_server: RunningServer) -> None:
    assert metric_value(quantized_server.base_url, MODEL_INFO.name, {"quantization": SCHEME}) == 1


@pytest.mark.slow
def test_quantized_checkpoint_answers_a_completion(quantized_server: RunningServer) -> None:
    with quantized_server.client(api_key=None) as client:
        body = {"model": "tiny-int8", "prompt": "int8", "max_tokens": 5, "ignore_eos": True}
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 5
