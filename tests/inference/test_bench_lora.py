"""`bench --lora N`: the same workload on the base alone and spread over N adapters; no timing asserted."""

from __future__ import annotations

import pytest

from inference.bench.cli import main
from inference.bench.lora import LoraBenchSettings, run_lora_bench


@pytest.fixture(scope="module")
def report(tiny_model_dir) -> dict:
    settings = LoraBenchSettings(
        adapters=2, model_path=tiny_model_dir, num_requests=4, prompt_tokens=(4, 8), output_tokens=(3, 3),
        repeats=2,
    )  # fmt: skip
    return run_lora_bench(settings)


def test_each_setting_serves_every_token_on_its_models(report):
    base_model = report["model"]
    for run in report["runs"]["base"]:
        assert run["generation_tokens_by_model"] == {base_model: 12}
    for run in report["runs"]["lora"]:
        # Requests alternate between the adapters; none goes to the base model.
        assert run["generation_tokens_by_model"] == {base_model: 0, "adapter-0": 6, "adapter-1": 6}


def test_ratios_are_lora_over_base_of_the_medians(report):
    base, lora = report["median"]["base"], report["median"]["lora"]
    ratios = report["lora_over_base"]
    assert ratios["output_tokens_per_s"] == lora["output_tokens_per_s"] / base["output_tokens_per_s"]
    assert ratios["cpu_time"] == lora["cpu_time_s"] / base["cpu_time_s"]


def test_the_cli_selects_the_lora_bench(tiny_model_dir, capsys):
    arguments = ["--lora", "1", "--model-path", str(tiny_model_dir), "--num-requests", "2"]
    assert main([*arguments, "--prompt-tokens", "4:4", "--output-tokens", "2:2"]) == 0
    assert '"lora_over_base"' in capsys.readouterr().out
