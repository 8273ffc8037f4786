"""Quantize once, serve the checkpoint: same answers as quantizing at load time, or a clear error."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from inference.__main__ import main as cli_main
from inference.bench.shapes import make_random_llama
from inference.config import ServerConfig
from inference.engine.async_engine import AsyncEngine
from inference.engine.request import GenerationRequest, SamplingParams
from inference.model_loading import LoadedModel, ModelLoadError, load_model
from inference.quantize import SCHEMES, QuantizationError, int8_modules, quantize_directory, read_record
from inference.quantize.checkpoint import RECORD_FILE, WEIGHTS_FILE
from inference.tiny_model import byte_level_tokenizer

from .conftest import run_with_engine

PROMPTS = ("Hello, int8!", "<user>Which scheme?</user>\n<assistant>", "The KV cache holds")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Saved in bf16, as a real checkpoint would be."""
    return make_random_llama(tmp_path_factory.mktemp("source"), "small")


@pytest.fixture(scope="module", params=SCHEMES)
def quantized_dir(
    request: pytest.FixtureRequest, source_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return quantize_directory(source_dir, tmp_path_factory.mktemp("out") / "quantized", request.param)


def _serve_greedy(loaded: LoadedModel) -> list[list[int]]:
    """Every prompt through the engine greedily, one sequence per step.

    int8-dynamic scales activations over a step's whole batch, so which requests share a step (set by
    thread timing) would change its tokens; one sequence per step makes two runs comparable.
    """
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)

    async def run(engine: AsyncEngine, _: object) -> list[list[int]]:
        streams = [
            engine.generate(GenerationRequest(f"r{index}", loaded.tokenizer(prompt).input_ids, sampling))
            for index, prompt in enumerate(PROMPTS)
        ]

        async def tokens(stream) -> list[int]:
            return [event.token_id async for event in stream]

        return list(await asyncio.gather(*(tokens(stream) for stream in streams)))

    settings = {"max_model_len": 128, "max_num_seqs": 1, "kv_cache_memory_bytes": 1 << 28}
    return run_with_engine(loaded, run, **settings)


def _leftovers(out_dir: Path) -> list[str]:
    return sorted(path.name for path in out_dir.parent.iterdir())


def test_checkpoint_serves_the_same_answers_as_quantizing_at_load_time(source_dir, quantized_dir):
    scheme = read_record(quantized_dir).scheme
    from_checkpoint = load_model(ServerConfig(model_path=quantized_dir))
    at_load_time = load_model(ServerConfig(model_path=source_dir, quantization=scheme))
    assert from_checkpoint.quantization == at_load_time.quantization == scheme
    assert _serve_greedy(from_checkpoint) == _serve_greedy(at_load_time)


def test_checkpoint_holds_exactly_the_tensors_quantizing_at_load_time_makes(source_dir, quantized_dir):
    from_checkpoint = load_model(ServerConfig(model_path=quantized_dir)).model.state_dict()
    scheme = read_record(quantized_dir).scheme
    at_load_time = load_model(ServerConfig(model_path=source_dir, quantization=scheme)).model.state_dict()
    assert from_checkpoint.keys() == at_load_time.keys()
    assert all(torch.equal(from_checkpoint[key], at_load_time[key]) for key in at_load_time)


def test_checkpoint_records_its_scheme_and_layers(source_dir, quantized_dir):
    record = read_record(quantized_dir)
    at_load_time = load_model(ServerConfig(model_path=source_dir, quantization=record.scheme))
    assert record.quantized_modules == list(int8_modules(at_load_time.model))
    assert {RECORD_FILE, WEIGHTS_FILE, "config.json", "tokenizer.json"} <= {
        path.name for path in quantized_dir.iterdir()
    }


def test_cli_writes_a_checkpoint_that_serve_loads_without_flags(source_dir, tmp_path):
    out_dir = tmp_path / "cli-out"
    assert cli_main(["quantize", "--model-path", str(source_dir), "--out", str(out_dir)]) == 0
    assert load_model(ServerConfig(model_path=out_dir)).quantization == "int8-dynamic"


def test_cli_reports_a_failure_and_exits_non_zero(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert cli_main(["quantize", "--model-path", str(missing), "--out", str(tmp_path / "out")]) != 0
    assert f"model directory {missing} does not exist" in capsys.readouterr().err


def test_source_without_config_is_refused_and_nothing_written(tmp_path):
    (tmp_path / "model").mkdir()
    out_dir = tmp_path / "out"
    with pytest.raises(QuantizationError, match=re.escape("no config.json")):
        quantize_directory(tmp_path / "model", out_dir)
    assert _leftovers(out_dir) == ["model"]


def test_source_without_weights_is_refused(source_dir, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_bytes((source_dir / "config.json").read_bytes())
    with pytest.raises(QuantizationError, match="has no weights file"):
        quantize_directory(model_dir, tmp_path / "out")


def test_corrupt_source_weights_are_refused_and_nothing_written(source_dir, tmp_path):
    model_dir = shutil.copytree(source_dir, tmp_path / "model")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out_dir = tmp_path / "out"
    with pytest.raises(QuantizationError, match="cannot read the model weights"):
        quantize_directory(model_dir, out_dir)
    assert _leftovers(out_dir) == ["model"]


def test_model_without_linear_layers_is_refused_by_name(tmp_path):
    model_dir = tmp_path / "gpt2"
    tokenizer = byte_level_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out_dir = tmp_path / "out"
    with pytest.raises(QuantizationError, match="GPT2LMHeadModel uses Conv1D layers"):
        quantize_directory(model_dir, out_dir)
    assert _leftovers(out_dir) == ["gpt2"]


def test_non_empty_out_is_kept_unless_overwrite_is_asked(source_dir, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    with pytest.raises(QuantizationError, match="is not empty"):
        quantize_directory(source_dir, out_dir)
    assert (out_dir / "keep.txt").read_text() == "precious"
    quantize_directory(source_dir, out_dir, overwrite=True)
    assert not (out_dir / "keep.txt").exists()
    assert _leftovers(out_dir) == ["out"]


def test_checkpoint_with_corrupt_weights_fails_to_load_naming_the_file(quantized_dir, tmp_path):
    broken = shutil.copytree(quantized_dir, tmp_path / "broken")
    (broken / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=re.escape(f"{WEIGHTS_FILE} is corrupt")):
        load_model(ServerConfig(model_path=broken))


def test_checkpoint_without_weights_fails_to_load_naming_the_file(quantized_dir, tmp_path):
    broken = shutil.copytree(quantized_dir, tmp_path / "broken")
    (broken / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelLoadError, match=re.escape(f"lacks its weights file {WEIGHTS_FILE}")):
        load_model(ServerConfig(model_path=broken))


def test_checkpoint_with_an_unreadable_record_fails_to_load(quantized_dir, tmp_path):
    broken = shutil.copytree(quantized_dir, tmp_path / "broken")
    (broken / RECORD_FILE).write_text(json.dumps({"scheme": "int4"}))
    message = f"{RECORD_FILE} is not a readable quantization record"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        load_model(ServerConfig(model_path=broken))


def test_checkpoint_refuses_a_conflicting_scheme(quantized_dir):
    scheme = read_record(quantized_dir).scheme
    other = next(candidate for candidate in SCHEMES if candidate != scheme)
    with pytest.raises(ModelLoadError, match=f"is quantized with {scheme}"):
        load_model(ServerConfig(model_path=quantized_dir, quantization=other))
