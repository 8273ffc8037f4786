"""LoRA adapters: settings, reading with peft, what is refused and why, the registry, merge-lora."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import ValidationError
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from inference.__main__ import build_parser, config_from_flags
from inference.__main__ import main as cli_main
from inference.config import LoraModule, ServerConfig
from inference.engine.core import EngineCore
from inference.engine.request import GenerationRequest, SamplingParams, UnknownModelError
from inference.engine.sequence import Sequence
from inference.lora import (
    LoraAdapter,
    LoraAdapterError,
    LoraLinear,
    LoraWeights,
    UnsupportedLoraError,
    one_adapter,
)
from inference.lora.adapter import read_lora_adapter
from inference.lora.merge import MergeError, merge_lora
from inference.lora.random_adapter import make_tiny_lora, save_random_adapter
from inference.model_loading import load_model
from inference.quantize.int8_linear import Int8DynamicLinear

from .conftest import run_with_engine

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def adapter_dir(base: PreTrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(base, tmp_path_factory.mktemp("adapter") / "support", seed=3, rank=4)


def _peft_adapter(base: PreTrainedModel, out_dir: Path, **options: object) -> Path:
    config = LoraConfig(**{"r": 4, "target_modules": ["q_proj", "v_proj"], **options})
    get_peft_model(copy.deepcopy(base), config).save_pretrained(out_dir)
    return out_dir


# Settings ------------------------------------------------------------------------------------------


def test_lora_modules_from_the_command_line_in_vllm_form(monkeypatch):
    monkeypatch.delenv("LLM_SERVING_LORA_MODULES", raising=False)
    flags = ["serve", "--lora-modules", "support=/a/b", "sales=/c", "--max-loras", "2"]
    args = build_parser().parse_args(flags)
    config = config_from_flags(args)
    assert config.lora_modules == [
        LoraModule(name="support", path=Path("/a/b")), LoraModule(name="sales", path=Path("/c"))
    ]
    assert config.max_loras == 2


def test_lora_modules_from_the_environment_as_a_json_list(monkeypatch):
    monkeypatch.setenv("LLM_SERVING_LORA_MODULES", json.dumps(["support=/a/b", "sales=/c"]))
    monkeypatch.setenv("LLM_SERVING_MAX_LORA_RANK", "64")
    config = config_from_flags(build_parser().parse_args(["serve"]))
    assert [str(module) for module in config.lora_modules] == ["support=/a/b", "sales=/c"]
    assert config.max_lora_rank == 64


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lora_modules": ["no-equals-sign"]}, "expected NAME=PATH"),
        ({"lora_modules": ["a=/x", "a=/y"]}, "repeated: a"),
        ({"lora_modules": ["a=/x", "b=/y"], "max_loras": 1}, "max_loras is 1"),
        ({"allow_runtime_lora_updating": True}, "needs api_key"),
        ({"lora_modules": ["a=/x"], "tensor_parallel_size": 2}, "not supported with tensor_parallel_size"),
    ],
)
def test_bad_lora_settings_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        ServerConfig(**settings)


# Reading adapters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_rslora", [False, True])
def test_each_layer_adds_what_peft_adds(base, tmp_path, use_rslora):
    # Per-module ranks and alphas from the patterns, and rsLoRA's alpha / sqrt(r), as peft reads them.
    options = {"lora_alpha": 32, "use_rslora": use_rslora, "init_lora_weights": False}
    patterns = {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 8}}
    directory = _peft_adapter(base, tmp_path / "patterned", **options, **patterns)
    adapter = read_lora_adapter("patterned", directory, CPU, torch.float32)
    reference = PeftModel.from_pretrained(copy.deepcopy(base), directory)
    assert len(adapter.layers) == 4
    for module, weights in adapter.layers.items():
        peft_layer = reference.base_model.model.get_submodule(module)
        torch.testing.assert_close(weights.b @ weights.a, peft_layer.get_delta_weight("default"))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "lora_only"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_options_not_computed_exactly_are_refused_by_name(base, tmp_path, options, named):
    directory = _peft_adapter(base, tmp_path / "refused", **options)
    with pytest.raises(UnsupportedLoraError, match=named):
        read_lora_adapter("refused", directory, CPU, torch.float32)


def test_an_unsupported_adapter_stops_the_start_up(base, tiny_model_dir, tmp_path):
    directory = _peft_adapter(base, tmp_path / "dora", use_dora=True)
    with pytest.raises(UnsupportedLoraError, match="DoRA"):
        load_model(ServerConfig(model_path=tiny_model_dir, lora_modules=[f"dora={directory}"]))


def test_a_directory_without_weights_is_refused_without_a_hub_lookup(adapter_dir, tmp_path):
    directory = tmp_path / "config-only"
    directory.mkdir()
    (directory / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    with pytest.raises(LoraAdapterError, match="has no adapter weights"):
        read_lora_adapter("config-only", directory, CPU, torch.float32)


def test_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(LoraAdapterError, match="not a LoRA adapter directory"):
        read_lora_adapter("missing", tmp_path / "missing", CPU, torch.float32)


# The registry ----------------------------------------------------------------------------------------


def test_limits_and_fit_to_the_base_model_are_checked(tiny_model_dir, adapter_dir, tmp_path):
    loaded = load_model(ServerConfig(model_path=tiny_model_dir, max_loras=1, max_lora_rank=4))
    registry = loaded.adapters
    registry.add(read_lora_adapter("first", adapter_dir, CPU, torch.float32))
    with pytest.raises(LoraAdapterError, match="already loaded"):
        registry.add(read_lora_adapter("first", adapter_dir, CPU, torch.float32))
    with pytest.raises(LoraAdapterError, match="max_loras"):
        registry.add(read_lora_adapter("second", adapter_dir, CPU, torch.float32))
    registry.remove("first")
    wide = save_random_adapter(loaded.model, tmp_path / "wide", seed=0, rank=8)
    with pytest.raises(LoraAdapterError, match="above max_lora_rank"):
        registry.add(read_lora_adapter("wide", wide, CPU, torch.float32))
    with pytest.raises(LoraAdapterError, match="the base model's"):
        registry.add(read_lora_adapter(loaded.name, adapter_dir, CPU, torch.float32))


def test_an_adapter_for_another_model_is_refused(tiny_model_dir, tmp_path):
    loaded = load_model(ServerConfig(model_path=tiny_model_dir))
    narrow = AutoModelForCausalLM.from_config(loaded.model.config.__class__(
        **{**loaded.model.config.to_dict(), "hidden_size": 32, "intermediate_size": 64}
    ))
    directory = save_random_adapter(narrow, tmp_path / "narrow", seed=0, rank=4)
    with pytest.raises(LoraAdapterError, match="trained for another base model"):
        loaded.adapters.add(read_lora_adapter("narrow", directory, CPU, torch.float32))


def test_the_output_layer_is_refused(tiny_model_dir, tmp_path):
    loaded = load_model(ServerConfig(model_path=tiny_model_dir))
    head = loaded.model.get_output_embeddings()
    weights = LoraWeights(torch.ones(2, head.in_features), torch.ones(head.out_features, 2))
    with pytest.raises(LoraAdapterError, match="output layer"):
        loaded.adapters.add(LoraAdapter("head", tmp_path, {"lm_head": weights}))


def test_layers_are_unwrapped_when_their_last_adapter_leaves(tiny_model_dir, adapter_dir):
    modules = [f"a={adapter_dir}", f"b={adapter_dir}"]
    loaded = load_model(ServerConfig(model_path=tiny_model_dir, lora_modules=modules))
    wrapped = [name for name, module in loaded.model.named_modules() if isinstance(module, LoraLinear)]
    assert wrapped
    loaded.adapters.remove("a")
    assert all(isinstance(loaded.model.get_submodule(name), LoraLinear) for name in wrapped)
    loaded.adapters.remove("b")
    assert not any(isinstance(module, LoraLinear) for module in loaded.model.modules())
    assert all(type(loaded.model.get_submodule(name)) is nn.Linear for name in wrapped)


# make-tiny-model --lora and merge-lora ---------------------------------------------------------------


def test_make_tiny_model_writes_an_adapter_for_the_demo_model(tiny_model_dir, tmp_path):
    assert cli_main(["make-tiny-model", "--lora", "support", "--out", str(tmp_path / "support")]) == 0
    make_tiny_lora("sales", tmp_path / "sales")
    modules = [f"support={tmp_path / 'support'}", f"sales={tmp_path / 'sales'}"]
    loaded = load_model(ServerConfig(model_path=tiny_model_dir, lora_modules=modules))
    support, sales = loaded.adapters
    module = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(support.layers[module].a, sales.layers[module].a)


def test_merge_lora_writes_the_merged_model_in_place(tiny_model_dir, adapter_dir, base, tmp_path):
    out_dir = tmp_path / "merged"
    arguments = ["--model-path", str(tiny_model_dir), "--adapter", str(adapter_dir), "--out", str(out_dir)]
    assert cli_main(["merge-lora", *arguments]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True)
    module = "model.layers.0.self_attn.q_proj"
    adapter = read_lora_adapter("support", adapter_dir, CPU, torch.float32)
    delta = adapter.layers[module].b @ adapter.layers[module].a
    torch.testing.assert_close(merged.get_submodule(module).weight, base.get_submodule(module).weight + delta)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merged"]
    with pytest.raises(MergeError, match="is not empty"):
        merge_lora(tiny_model_dir, adapter_dir, out_dir)


def test_merge_lora_leaves_nothing_behind_on_failure(tiny_model_dir, tmp_path):
    with pytest.raises(MergeError, match="not a LoRA adapter directory"):
        merge_lora(tiny_model_dir, tmp_path / "missing", tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


# Runtime unloading ------------------------------------------------------------------------------------


def test_unloading_ends_the_adapters_requests_and_leaves_the_others_running(tiny_model_dir, adapter_dir):
    settings = {"model_path": tiny_model_dir, "lora_modules": [f"support={adapter_dir}"]}
    loaded = load_model(ServerConfig(**settings))
    endless = SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True)

    async def body(engine, registry):
        on_adapter = engine.generate(GenerationRequest("on-adapter", [1, 2, 3], endless, lora_name="support"))
        on_base = engine.generate(GenerationRequest("on-base", [1, 2, 3], replace(endless, max_tokens=40)))
        await anext(on_adapter)
        await anext(on_base)
        await engine.unload_lora_adapter("support")
        rest_on_adapter = [event async for event in on_adapter]
        rest_on_base = [event async for event in on_base]
        with pytest.raises(UnknownModelError):
            engine.generate(GenerationRequest("late", [1, 2, 3], endless, lora_name="support"))
        return rest_on_adapter, rest_on_base

    rest_on_adapter, rest_on_base = run_with_engine(loaded, body, **settings)
    assert len(rest_on_adapter) < 299 and all(event.finish_reason is None for event in rest_on_adapter)
    assert (len(rest_on_base), rest_on_base[-1].finish_reason) == (39, "length")
    assert not any(isinstance(module, LoraLinear) for module in loaded.model.modules())


def test_an_int8_dynamic_layer_gets_its_adapter_added_on_top(tiny_model_dir, adapter_dir):
    settings = {"model_path": tiny_model_dir, "quantization": "int8-dynamic"}
    loaded = load_model(ServerConfig(**settings, lora_modules=[f"support={adapter_dir}"]))
    module = "model.layers.0.self_attn.q_proj"
    layer = loaded.model.get_submodule(module)
    assert isinstance(layer, LoraLinear) and isinstance(layer.base, Int8DynamicLinear)
    (adapter,) = loaded.adapters
    weights = adapter.layers[module]
    x = torch.randn(1, 5, layer.in_features)
    with torch.inference_mode(), one_adapter(loaded.adapters.id_of("support")):
        adapted = layer(x)
    torch.testing.assert_close(adapted, layer.base(x) + x @ weights.a.T @ weights.b.T)


# Batching ---------------------------------------------------------------------------------------------


def test_a_step_applies_each_adapter_once_whatever_its_requests(tiny_model_dir, adapter_dir):
    config = ServerConfig(
        model_path=tiny_model_dir, lora_modules=[f"a={adapter_dir}", f"b={adapter_dir}"], max_num_seqs=16
    )
    loaded = load_model(config)
    core = EngineCore(loaded, config)
    names = ["a", None, "b", "a", None, "b", "a", "b", None]  # interleaved, as requests arrive
    for index, name in enumerate(names):
        sampling = SamplingParams(max_tokens=2)
        request = GenerationRequest(f"r{index}", [1, 2, 3 + index], sampling, lora_name=name)
        core.add(Sequence.from_request(request, arrival_time=0.0))
    chunks = core.schedule()
    segments = core.runner.prepare(chunks).lora_segments
    ids = [loaded.adapters.id_of(name) for name in ("a", "b")]
    # One range of rows per adapter: three prompts of three tokens each.
    assert [(lora_id, last - first) for lora_id, first, last in segments] == [(ids[0], 9), (ids[1], 9)]
