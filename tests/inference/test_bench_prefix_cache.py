"""`bench --workload`: caching on against off on the same requests; shapes and counts, no timing asserted."""

from __future__ import annotations

import json

import pytest

from inference.bench.cli import main
from inference.bench.prefix_cache import PrefixBenchSettings, run_prefix_bench

SETTINGS = ("caching_off", "caching_on")


@pytest.fixture(scope="module")
def shared_prefix(tiny_model_dir) -> dict:
    # A token budget of one prompt per step, so that the later prompts find the first one cached.
    settings = PrefixBenchSettings(
        workload="shared-prefix", model_path=tiny_model_dir, num_requests=4, prefix_tokens=64,
        suffix_tokens=8, output_tokens=3, repeats=2, max_num_batched_tokens=72,
    )  # fmt: skip
    return run_prefix_bench(settings)


def test_every_run_serves_every_requested_token(shared_prefix):
    for setting in SETTINGS:
        runs = shared_prefix["runs"][setting]
        assert len(runs) == 2
        assert all((run["requests"], run["output_tokens"]) == (4, 12) for run in runs)


def test_caching_on_reuses_the_shared_prefix_for_all_but_the_first_request(shared_prefix):
    # The first prompt fills the first step; the three others reuse its prefix in the second.
    assert shared_prefix["median"]["caching_on"]["prefix_cache_hit_rate"] == 3 * 64 / (4 * 72)
    assert shared_prefix["median"]["caching_off"]["prefix_cache_hit_rate"] == 0.0


def test_ratios_are_on_over_off_of_the_medians(shared_prefix):
    off, on = shared_prefix["median"]["caching_off"], shared_prefix["median"]["caching_on"]
    ratios = shared_prefix["on_over_off"]
    assert ratios["ttft_p50"] == on["ttft_p50_s"] / off["ttft_p50_s"]
    assert ratios["output_tokens_per_s"] == on["output_tokens_per_s"] / off["output_tokens_per_s"]


def test_paired_ratios_are_the_median_of_each_repeat_s_on_over_off(shared_prefix):
    pairs = zip(shared_prefix["runs"]["caching_off"], shared_prefix["runs"]["caching_on"], strict=True)
    ratios = [on["cpu_time_s"] / off["cpu_time_s"] for off, on in pairs]
    assert shared_prefix["paired_on_over_off"]["cpu_time"] == pytest.approx(sum(ratios) / 2)


def test_multi_turn_resends_the_history_and_reuses_it(tiny_model_dir, capsys):
    argv = ["--workload", "multi-turn", "--model-path", str(tiny_model_dir), "--conversations", "2",
            "--turns", "3", "--message-tokens", "20", "--answer-tokens", "4"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["workload"]["name"] == "multi-turn"
    on = report["runs"]["caching_on"][0]
    assert (on["requests"], on["output_tokens"]) == (6, 24)
    # Turn 2 (44 tokens) reuses 16 of its first 24; turn 3 (68 tokens) 32 of its first 48.
    assert on["prefix_cache_hit_rate"] == 2 * (16 + 32) / (2 * (20 + 44 + 68))


def test_the_random_workload_shares_nothing(tiny_model_dir):
    settings = PrefixBenchSettings(
        workload="random", model_path=tiny_model_dir, random_requests=4,
        random_prompt_tokens=(20, 40), random_output_tokens=(2, 4),
    )  # fmt: skip
    report = run_prefix_bench(settings)
    assert report["median"]["caching_on"]["prefix_cache_hit_rate"] == 0.0
