"""Norms and MLPs on the CPU's kernels (`fused_layers`): found by what they compute, and computing it."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from inference.engine import cpu_decode
from inference.engine.fused_layers import fuse_layers

SIZES = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100,
}  # fmt: skip
# Per architecture, what has the Llama formulas: RMS norms (two per layer and the final one; Qwen3 also
# normalises each query and key head) and SiLU-gated MLPs. Gemma's norms multiply by `1 + weight` and
# its MLPs gate with a GELU; OLMo's norms are layer norms without parameters.
MODELS = [
    pytest.param(LlamaForCausalLM, LlamaConfig, {"RMS norms": 5, "gated MLPs": 2}, id="llama"),
    pytest.param(Qwen3ForCausalLM, Qwen3Config, {"RMS norms": 9, "gated MLPs": 2}, id="qwen3"),
    pytest.param(Gemma2ForCausalLM, Gemma2Config, {"RMS norms": 0, "gated MLPs": 0}, id="gemma2"),
    pytest.param(OlmoForCausalLM, OlmoConfig, {"RMS norms": 0, "gated MLPs": 2}, id="olmo"),
]


@pytest.fixture(scope="module", autouse=True)
def _kernels() -> None:
    cpu_decode.load()


def _random_model(model_class, config_class, dtype: torch.dtype) -> torch.nn.Module:
    model = model_class(config_class(**SIZES)).to(dtype).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # norm weights far from their initial ones
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(("model_class", "config_class", "fused"), MODELS)
def test_the_layers_of_the_llama_formulas_are_fused_and_compute_the_same(
    model_class, config_class, fused, dtype
):
    model = _random_model(model_class, config_class, dtype)
    tokens = torch.randint(0, SIZES["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(tokens).logits
    assert fuse_layers(model, dtype) == fused
    with torch.inference_mode():
        logits = model(tokens).logits
    # Close, not equal: the norm kernel's sum of squares adds in another order (test_cpu_step_ops).
    torch.testing.assert_close(logits, expected)


def test_a_fused_norm_given_another_dtype_than_its_weight_runs_its_own_forward():
    norm = LlamaRMSNorm(32).to(torch.bfloat16)
    hidden = torch.randn(3, 32)
    with torch.inference_mode():
        expected = norm(hidden)
        assert fuse_layers(norm, torch.bfloat16) == {"RMS norms": 1, "gated MLPs": 0}
        assert torch.equal(norm(hidden), expected) and expected.dtype == torch.float32


class _RoutedMlp(torch.nn.Module):
    """The attributes of a gated MLP, and a forward that wants more than the hidden states."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16)
        self.down_proj, self.act_fn = torch.nn.Linear(16, 8), torch.nn.SiLU()

    def forward(self, hidden: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(hidden)) * self.up_proj(hidden)) * routing


def test_layers_that_cannot_run_on_the_probe_alone_keep_their_forward():
    model = torch.nn.ModuleDict({"mlp": _RoutedMlp(), "norm": torch.nn.GroupNorm(2, 8)})
    assert fuse_layers(model, torch.float32) == {"RMS norms": 0, "gated MLPs": 0}
    hidden = torch.randn(3, 8)
    assert model["mlp"](hidden, torch.ones(1)).shape == (3, 8)
