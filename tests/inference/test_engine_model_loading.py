"""Loading a local Hugging Face model, or the tiny demo model when none is given."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference import model_loading
from inference.bench.shapes import SHAPES
from inference.config import ServerConfig
from inference.model_loading import ModelLoadError, load_model, tiny_demo_model_dir
from inference.tiny_model import write_random_llama


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


@pytest.mark.parametrize(
    ("saved", "cpu_has_bfloat16", "served"),
    [
        (torch.bfloat16, True, torch.bfloat16),
        (torch.float16, True, torch.bfloat16),
        (torch.bfloat16, False, torch.float32),
        (torch.float32, True, torch.float32),
    ],
    ids=["bf16-native", "fp16-native", "bf16-emulated", "fp32-checkpoint"],
)
def test_auto_dtype_on_the_cpu_is_bfloat16_only_for_a_16_bit_checkpoint_and_native_bfloat16(
    tmp_path, monkeypatch, saved, cpu_has_bfloat16, served
):
    model_dir = write_random_llama(tmp_path / "model", SHAPES["small"], dtype=saved)
    monkeypatch.setattr(model_loading, "cpu_computes_bfloat16", lambda: cpu_has_bfloat16)
    loaded = load_model(ServerConfig(model_path=model_dir, device="cpu"))
    assert loaded.dtype == served
    assert next(loaded.model.parameters()).dtype == served


def test_the_bfloat16_probe_agrees_with_the_cpu_flags():
    """Where the kernel lists the CPU's flags (Linux), they name the instructions the probe reports."""
    flags = Path("/proc/cpuinfo")
    if not flags.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    words = set(flags.read_text().split())
    assert model_loading.cpu_computes_bfloat16() == bool(words & {"avx512_bf16", "amx_bf16"})


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
