"""LoRA adapters behind the real server, through the `openai` client: ids, answers, errors, updates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from inference.config import ServerConfig
from inference.lora.random_adapter import make_tiny_lora

from .conftest import API_KEY, RunningServer, in_process_server, metric_value

pytestmark = pytest.mark.slow

PROMPT = "Where is my order?"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_tiny_lora(name, root / name) for name in ("support", "sales", "billing")}


@pytest.fixture(scope="module")
def lora_server(tiny_model_dir: Path, adapters: dict[str, Path]) -> Iterator[RunningServer]:
    config = ServerConfig(
        model_path=tiny_model_dir,
        api_key=API_KEY,
        lora_modules=[f"{name}={adapters[name]}" for name in ("support", "sales")],
        allow_runtime_lora_updating=True,
    )
    with in_process_server(config) as running:
        yield running


@pytest.fixture
def client(lora_server: RunningServer) -> openai.OpenAI:
    return lora_server.openai()


def _complete(client: openai.OpenAI, model: str) -> openai.types.Completion:
    return client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )


def test_models_lists_the_base_and_each_adapter_with_its_parent(client, lora_server):
    base = lora_server.state.model.name
    models = {model.id: model.model_extra.get("parent") for model in client.models.list()}
    assert models == {base: None, "support": base, "sales": base}


def test_each_adapter_answers_with_its_own_weights(client, lora_server):
    base = lora_server.state.model.name
    completions = {model: _complete(client, model) for model in (base, "support", "sales")}
    assert {model: completion.model for model, completion in completions.items()} == {
        model: model for model in completions
    }
    texts = [completion.choices[0].text for completion in completions.values()]
    assert len(set(texts)) == 3
    # The same adapter, asked again, answers the same: the id picks the weights, not the batch.
    assert _complete(client, "support").choices[0].text == completions["support"].choices[0].text


def test_an_unknown_model_is_a_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["code"] == "model_not_found"
    assert raised.value.body["param"] == "model"


def test_per_model_token_metrics(client, lora_server):
    _complete(client, "sales")
    labels = {"model": "sales"}
    assert metric_value(lora_server.base_url, "llm_generation_tokens_total", labels) >= 8


def test_runtime_load_and_unload_need_the_key(lora_server, adapters):
    body = {"lora_name": "intruder", "lora_path": str(adapters["billing"])}
    with lora_server.client(api_key=None) as anonymous:
        assert anonymous.post("/v1/load_lora_adapter", json=body).status_code == 401
        assert anonymous.post("/v1/unload_lora_adapter", json={"lora_name": "support"}).status_code == 401
    with lora_server.client(api_key="wrong-key") as wrong:
        assert wrong.post("/v1/load_lora_adapter", json=body).status_code == 401
    assert "intruder" not in lora_server.state.model.adapter_names


def test_runtime_load_serve_and_unload(client, lora_server, adapters):
    body = {"lora_name": "billing", "lora_path": str(adapters["billing"])}
    with lora_server.client() as http:
        loaded = http.post("/v1/load_lora_adapter", json=body)
        assert loaded.status_code == 200, loaded.text
        assert "billing" in {model.id for model in client.models.list()}
        assert _complete(client, "billing").model == "billing"

        again = http.post("/v1/load_lora_adapter", json=body)
        assert (again.status_code, again.json()["error"]["param"]) == (400, "lora_path")

        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "billing"}).status_code == 200
        assert "billing" not in {model.id for model in client.models.list()}
        with pytest.raises(openai.NotFoundError):
            _complete(client, "billing")
        gone = http.post("/v1/unload_lora_adapter", json={"lora_name": "billing"})
        assert (gone.status_code, gone.json()["error"]["code"]) == (404, "model_not_found")


def test_loading_a_path_that_is_no_adapter_is_a_400(lora_server, tmp_path):
    with lora_server.client() as http:
        response = http.post("/v1/load_lora_adapter", json={"lora_name": "empty", "lora_path": str(tmp_path)})
    assert response.status_code == 400
    assert "not a LoRA adapter directory" in response.json()["error"]["message"]


def test_runtime_updates_are_off_unless_allowed(api_server):
    with api_server.client() as http:
        response = http.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/"})
    assert response.status_code == 404
