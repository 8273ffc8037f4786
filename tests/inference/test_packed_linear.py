"""bfloat16 linear layers packed for oneDNN on the CPU: the same outputs, bit for bit, as the stock
layers, in the layer, the model, the engine and under adapters."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from inference.config import ServerConfig
from inference.engine import packed_linear
from inference.engine.core import EngineCore
from inference.engine.packed_linear import PackedLinear, pack_linear_layers, packing_applies
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sequence import Sequence
from inference.lora import one_adapter
from inference.lora.adapter import read_lora_adapter
from inference.lora.random_adapter import save_random_adapter
from inference.model_loading import LoadedModel, load_model
from inference.quantize.memory import model_weight_bytes

CPU = torch.device("cpu")
BF16 = torch.bfloat16

pytestmark = pytest.mark.skipif(
    not packing_applies(CPU, BF16), reason="oneDNN runs no bfloat16 kernels on this CPU, so nothing is packed"
)


def _load(model_dir: Path, dtype: str = "bfloat16") -> LoadedModel:
    return load_model(ServerConfig(model_path=model_dir, dtype=dtype))


def _logits(model: nn.Module, token_ids: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor(token_ids)).logits


def _linear_layers(model: nn.Module) -> int:
    return sum(type(module) is nn.Linear for module in model.modules())


@pytest.mark.parametrize("rows", [1, 3, 64, 200])
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_layer_gives_the_linear_layers_output_bit_for_bit(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 160, bias=bias, dtype=BF16)
    packed = PackedLinear(linear)
    hidden = torch.randn(1, rows, 96, dtype=BF16)
    with torch.inference_mode():
        assert torch.equal(packed(hidden), linear(hidden))
    assert (packed.in_features, packed.out_features) == (96, 160)


def test_a_strided_input_is_multiplied_as_its_contiguous_copy():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, dtype=BF16)
    packed = PackedLinear(linear)
    strided = torch.randn(1, 10, 128, dtype=BF16)[:, :, ::2]
    with torch.inference_mode():
        assert torch.equal(packed(strided), linear(strided.contiguous()))


def test_packing_takes_over_every_linear_layer_and_keeps_the_models_logits(tiny_model_dir):
    loaded = _load(tiny_model_dir)
    layers = _linear_layers(loaded.model)
    tokens = [[5, 17, 99, 3, 42, 7, 1, 250]]
    expected = _logits(loaded.model, tokens)
    weight_bytes = model_weight_bytes(loaded.model)

    assert pack_linear_layers(loaded.model) == layers > 0
    assert _linear_layers(loaded.model) == 0
    assert torch.equal(_logits(loaded.model, tokens), expected)
    assert model_weight_bytes(loaded.model) == weight_bytes  # packed weights are counted, and once


def test_the_start_up_log_says_how_many_layers_were_packed_and_how_long_it_took(tiny_model_dir, caplog):
    loaded = _load(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger=packed_linear.__name__):
        replaced = pack_linear_layers(loaded.model)
    assert re.fullmatch(rf"{replaced} linear layers packed for oneDNN in \d+\.\d s", caplog.messages[-1])


def test_float32_layers_are_left_as_they_are(tiny_model_dir):
    loaded = _load(tiny_model_dir, "float32")
    layers = _linear_layers(loaded.model)
    assert pack_linear_layers(loaded.model) == 0
    assert _linear_layers(loaded.model) == layers


def test_a_head_tied_to_the_input_embeddings_keeps_their_weight(tiny_model_dir):
    loaded = _load(tiny_model_dir)
    model = loaded.model
    model.lm_head.weight = model.get_input_embeddings().weight
    tokens = [[5, 17, 99, 3]]
    expected = _logits(model, tokens)
    pack_linear_layers(model)
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert torch.equal(_logits(model, tokens), expected)


def _greedy_outputs(loaded: LoadedModel) -> dict[str, list[int]]:
    core = EngineCore(loaded, ServerConfig(max_num_seqs=4, max_model_len=64, kv_cache_memory_bytes=1 << 24))
    sampling = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompts = {"a": [5, 17, 99, 3, 42], "b": [7] * 19, "c": [250, 1], "d": list(range(30, 60))}
    requests = [GenerationRequest(name, prompt, sampling) for name, prompt in prompts.items()]
    seqs = [Sequence.from_request(request, 0.0) for request in requests]
    for seq in seqs:
        core.add(seq)
    while core.sequences:
        core.step()
    return {seq.request_id: seq.output_token_ids for seq in seqs}


def test_the_engine_generates_on_packed_layers_what_it_does_on_the_stock_ones(tiny_model_dir, monkeypatch):
    packed = _load(tiny_model_dir)
    outputs = _greedy_outputs(packed)
    assert _linear_layers(packed.model) == 0  # the engine packed its model's layers

    monkeypatch.setattr(packed_linear, "packing_applies", lambda device, dtype: False)
    stock = _load(tiny_model_dir)
    assert _greedy_outputs(stock) == outputs
    assert _linear_layers(stock.model) > 0


def test_an_adapter_loaded_after_packing_adds_what_it_adds_to_the_stock_layers(tiny_model_dir, tmp_path):
    stock, packed = _load(tiny_model_dir), _load(tiny_model_dir)
    adapter_dir = save_random_adapter(stock.model, tmp_path / "support", seed=3, rank=4)
    pack_linear_layers(packed.model)
    tokens = [[5, 17, 99, 3, 42, 7]]
    logits = []
    for loaded in (stock, packed):
        loaded.adapters.add(read_lora_adapter("support", adapter_dir, CPU, BF16))
        with one_adapter(loaded.adapters.id_of("support")):
            logits.append(_logits(loaded.model, tokens))
    assert not torch.equal(logits[0], _logits(stock.model, tokens))  # the adapter changes the output
    assert torch.equal(logits[1], logits[0])
