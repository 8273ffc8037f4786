"""The benchmark's report: shape and internal consistency on a very small workload (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from inference.bench import BenchSettings, main, run_bench
from inference.bench_workload import make_workload, percentiles
from inference.tiny_model import byte_level_tokenizer

SYSTEMS = ("engine", "baseline")


@pytest.fixture(scope="module")
def small_settings(tiny_model_dir) -> BenchSettings:
    return BenchSettings(
        model_path=tiny_model_dir,
        num_requests=6,
        prompt_tokens=(4, 12),
        output_tokens=(2, 6),
        rate_per_second=200.0,
        max_num_seqs=4,
    )


@pytest.fixture(scope="module")
def report(small_settings) -> dict:
    return run_bench(small_settings)


@pytest.mark.parametrize("mode", ["burst", "steady"])
def test_both_systems_serve_every_requested_token(report, small_settings, mode):
    settings = small_settings
    rate = settings.rate_per_second if mode == "steady" else None
    vocab_size = len(byte_level_tokenizer())
    workload = make_workload(
        settings.num_requests, settings.prompt_tokens, settings.output_tokens, vocab_size, rate, settings.seed
    )
    expected_tokens = sum(item.max_tokens for item in workload)
    for system in SYSTEMS:
        summary = report[mode][system]
        assert summary["requests"] == small_settings.num_requests
        assert summary["output_tokens"] == expected_tokens


@pytest.mark.parametrize("mode", ["burst", "steady"])
def test_figures_are_positive_and_ordered(report, mode):
    for system in SYSTEMS:
        summary = report[mode][system]
        assert summary["output_tokens_per_s"] > 0
        for latency in ("ttft_s", "inter_token_latency_s"):
            figures = summary[latency]
            assert 0 < figures["p50"] <= figures["p90"] <= figures["p99"]


def test_ratios_compare_engine_with_baseline(report):
    burst = report["burst"]
    ratio = burst["engine_over_baseline"]["output_tokens_per_s"]
    assert ratio == burst["engine"]["output_tokens_per_s"] / burst["baseline"]["output_tokens_per_s"]


def test_the_cli_prints_the_report_as_json(tiny_model_dir, capsys):
    argv = ["--model-path", str(tiny_model_dir), "--num-requests", "2", "--prompt-tokens", "3:5"]
    assert main([*argv, "--output-tokens", "2", "--modes", "burst"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["burst"]) == {"arrival_rate_per_s", "engine", "baseline", "engine_over_baseline"}


def test_percentiles_pick_by_nearest_rank():
    values = [float(value) for value in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
