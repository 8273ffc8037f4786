"""int8 module swapping: the weights shrink, the logits stay close, `int8` picks a scheme per device.

Accuracy bounds, over the fixed prompt set of `inference.quantize.accuracy` on a random 256-wide
Llama (per prompt: relative error ||q - r|| / ||r|| of the logits at every position; over all
positions: the share where the top-1 token agrees with the unquantized model):
  int8-weight-only  max relative error <= 0.05, top-1 agreement >= 0.90
  int8-dynamic      max relative error <= 0.10, top-1 agreement >= 0.85
Dynamic is looser because it also rounds activations to int8, with one scale per tensor.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from inference.bench.shapes import make_random_llama
from inference.quantize import QuantizationError, int8_modules, quantize_model, resolve_scheme
from inference.quantize.accuracy import logits_agreement, prompt_logits
from inference.quantize.memory import layers_bytes, model_weight_bytes
from inference.quantize.swap import quantizable_linears

ACCURACY_BOUNDS = {
    "int8-weight-only": {"max_relative_error": 0.05, "top1_agreement": 0.90},
    "int8-dynamic": {"max_relative_error": 0.10, "top1_agreement": 0.85},
}
MAX_QUANTIZED_BYTES_SHARE = 0.55


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_llama(tmp_path_factory.mktemp("small-llama"), "small")


def _load(model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True).eval()


@pytest.mark.parametrize(
    ("scheme", "dtype"),
    [
        ("int8-weight-only", torch.float32),
        ("int8-weight-only", torch.bfloat16),
        ("int8-dynamic", torch.float32),
    ],
)
def test_quantized_layers_take_at_most_55_percent_of_their_float_bytes(tiny_model_dir, scheme, dtype):
    model = _load(tiny_model_dir, dtype)
    names = quantizable_linears(model)
    float_bytes = layers_bytes(model, names)
    quantize_model(model, scheme)
    assert set(int8_modules(model)) == set(names)
    assert layers_bytes(model, names) <= MAX_QUANTIZED_BYTES_SHARE * float_bytes


def test_quantizing_shrinks_the_whole_model_by_what_the_layers_save(tiny_model_dir):
    model = _load(tiny_model_dir)
    names = quantizable_linears(model)
    before_total, before_layers = model_weight_bytes(model), layers_bytes(model, names)
    quantize_model(model, "int8-weight-only")
    saved = before_layers - layers_bytes(model, names)
    assert model_weight_bytes(model) == before_total - saved


def test_output_layer_and_embeddings_stay_unquantized(tiny_model_dir):
    model = _load(tiny_model_dir)
    quantize_model(model, "int8-weight-only")
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    assert model.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize("scheme", sorted(ACCURACY_BOUNDS))
def test_quantized_logits_stay_within_the_stated_bounds(small_model_dir, scheme):
    tokenizer = AutoTokenizer.from_pretrained(small_model_dir, local_files_only=True)
    model = _load(small_model_dir)
    reference = prompt_logits(model, tokenizer)
    quantized = copy.deepcopy(model)
    quantize_model(quantized, scheme)
    agreement = logits_agreement(reference, prompt_logits(quantized, tokenizer))
    bounds = ACCURACY_BOUNDS[scheme]
    assert agreement["max_relative_error"] <= bounds["max_relative_error"]
    assert agreement["top1_agreement"] >= bounds["top1_agreement"]


def test_int8_means_dynamic_on_cpu_and_weight_only_on_gpu():
    assert resolve_scheme("int8", torch.device("cpu")) == "int8-dynamic"
    assert resolve_scheme("int8", torch.device("cuda")) == "int8-weight-only"


def test_dynamic_scheme_is_refused_off_cpu():
    with pytest.raises(QuantizationError, match="int8-dynamic runs on CPU only"):
        resolve_scheme("int8-dynamic", torch.device("cuda"))
