"""Loading a local Hugging Face model, or the tiny demo model when none is given."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.config import ServerConfig
from inference.model_loading import ModelLoadError, load_model, tiny_demo_model_dir


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def test_without_a_model_path_the_demo_model_is_made_in_the_cache(cache_home):
    loaded = load_model(ServerConfig())
    assert tiny_demo_model_dir() == cache_home / "llm-serving" / "tiny-demo"
    assert (tiny_demo_model_dir() / "config.json").is_file()
    assert (loaded.name, loaded.device.type, loaded.dtype) == ("tiny-demo", "cpu", torch.float32)


def test_the_cached_demo_model_is_reused(cache_home):
    load_model(ServerConfig())
    written = (tiny_demo_model_dir() / "model.safetensors").stat().st_mtime_ns
    load_model(ServerConfig())
    assert (tiny_demo_model_dir() / "model.safetensors").stat().st_mtime_ns == written


def test_a_model_directory_is_served_under_its_name(tiny_model_dir):
    loaded = load_model(ServerConfig(model_path=tiny_model_dir))
    assert loaded.name == tiny_model_dir.name
    assert loaded.max_model_len == loaded.model.config.max_position_embeddings


def test_dtype_can_be_overridden(tiny_model_dir):
    loaded = load_model(ServerConfig(model_path=tiny_model_dir, dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(ServerConfig(model_path=tmp_path / "nowhere"))


def test_a_corrupt_directory_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(ServerConfig(model_path=tmp_path))


def test_a_context_longer_than_the_model_is_refused(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="max_model_len"):
        load_model(ServerConfig(model_path=tiny_model_dir, max_model_len=4096))
