"""The benchmark's report: shape and internal consistency on a very small workload (no timing asserted)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from inference.bench.cli import main
from inference.bench.flops import model_flops
from inference.bench.peers import cache_for_workload, run_static_batches
from inference.bench.serving import (
    STEADY_LOAD_OVER_BASELINE_CAPACITY,
    BenchModels,
    BenchSettings,
    run_bench,
    run_systems,
)
from inference.bench.workload import WorkItem, make_workload, percentiles
from inference.config import ServerConfig, default_torch_threads
from inference.model_loading import load_model
from inference.tiny_model import byte_level_tokenizer

SYSTEMS = ("engine", "baseline")


@pytest.fixture(scope="module")
def small_settings(tiny_model_dir) -> BenchSettings:
    return BenchSettings(
        model_path=tiny_model_dir,
        num_requests=6,
        prompt_tokens=(4, 12),
        output_tokens=(2, 6),
        max_num_seqs=4,
    )


@pytest.fixture(scope="module")
def report(small_settings) -> dict:
    return run_bench(small_settings)


@pytest.mark.parametrize("mode", ["burst", "steady"])
def test_both_systems_serve_every_requested_token(report, small_settings, mode):
    settings = small_settings
    rate = report[mode]["arrival_rate_per_s"]
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


@pytest.mark.parametrize("mode", ["burst", "steady"])
def test_request_rate_is_requests_over_duration(report, mode):
    for system in SYSTEMS:
        summary = report[mode][system]
        assert summary["requests_per_s"] == summary["requests"] / summary["duration_s"]


def test_steady_rate_defaults_to_a_multiple_of_the_baseline_capacity_measured_in_burst(report):
    capacity = report["burst"]["baseline"]["requests_per_s"]
    assert report["burst"]["arrival_rate_per_s"] is None
    assert report["steady"]["arrival_rate_per_s"] == STEADY_LOAD_OVER_BASELINE_CAPACITY * capacity
    source = f"{STEADY_LOAD_OVER_BASELINE_CAPACITY}x baseline capacity measured in burst"
    assert report["steady"]["rate_source"] == source


def test_steady_alone_measures_the_baseline_capacity_in_a_calibration_burst(small_settings):
    report = run_bench(replace(small_settings, modes=("steady",)))
    assert "burst" not in report
    assert report["steady"]["arrival_rate_per_s"] > 0
    assert "calibration burst" in report["steady"]["rate_source"]
    assert report["steady"]["baseline"]["requests"] == small_settings.num_requests


def test_both_systems_run_with_the_threads_serve_uses(report):
    assert report["torch_threads"] == default_torch_threads()


def test_ratios_compare_engine_with_baseline(report):
    burst = report["burst"]
    ratio = burst["engine_over_baseline"]["output_tokens_per_s"]
    assert ratio == burst["engine"]["output_tokens_per_s"] / burst["baseline"]["output_tokens_per_s"]


def test_the_cli_prints_the_report_as_json(tiny_model_dir, capsys):
    argv = ["--model-path", str(tiny_model_dir), "--num-requests", "2", "--prompt-tokens", "3:5"]
    assert main([*argv, "--output-tokens", "2", "--modes", "burst"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = {"arrival_rate_per_s", "matmul_flops_per_s", "output_tokens_per_s_at_matmul_rate"}
    expected |= {"engine", "baseline"}
    assert set(printed["burst"]) == {*expected, "engine_over_baseline"}


def test_the_rate_flag_sets_the_steady_rate(tiny_model_dir, capsys):
    argv = ["--model-path", str(tiny_model_dir), "--num-requests", "2", "--prompt-tokens", "3:5"]
    assert main([*argv, "--output-tokens", "2", "--modes", "steady", "--rate", "40"]) == 0
    steady = json.loads(capsys.readouterr().out)["steady"]
    assert (steady["arrival_rate_per_s"], steady["rate_source"]) == (40.0, "--rate")


def test_percentiles_pick_by_nearest_rank():
    values = [float(value) for value in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}


PEERS = ("transformers_static", "transformers_continuous")


@pytest.mark.slow
def test_peers_serve_the_same_requests_in_the_same_run(small_settings):
    report = run_bench(replace(small_settings, peers=True, modes=("burst",), static_batch_size=4))
    burst = report["burst"]
    for system in (*SYSTEMS, *PEERS):
        assert burst[system]["requests"] == small_settings.num_requests
    assert burst["transformers_static"]["output_tokens"] == burst["engine"]["output_tokens"]
    assert burst["transformers_continuous"]["output_tokens"] == burst["engine"]["output_tokens"]
    for peer in PEERS:
        ratio = burst[f"engine_over_{peer}"]["output_tokens_per_s"]
        assert ratio == burst["engine"]["output_tokens_per_s"] / burst[peer]["output_tokens_per_s"]


def _changed_by_an_engine(model: torch.nn.Module) -> list[str]:
    """The modules whose forward an engine replaced (its kernels'), or that it swapped in."""
    stock_modules = ("torch.", "transformers.")
    return [
        name
        for name, module in model.named_modules()
        if "forward" in vars(module) or not type(module).__module__.startswith(stock_modules)
    ]


def test_the_baseline_runs_the_stock_model_after_any_number_of_engine_runs(tiny_model_dir, small_settings):
    config = ServerConfig(model_path=tiny_model_dir)
    models = BenchModels(engine=load_model(config), peers=load_model(config))
    workload = make_workload(4, (4, 8), (2, 3), models.peers.vocab_size, None, 0)
    for _ in range(2):  # rounds, as --repeats runs them
        run_systems(tiny_model_dir, models, replace(small_settings, modes=("burst",)), workload)
    assert _changed_by_an_engine(models.engine.model)
    assert _changed_by_an_engine(models.peers.model) == []


def test_each_system_reports_its_share_of_the_measured_matmul_rate(report):
    machine = report["machine"]
    assert machine["layer_flops_per_token"] > machine["lm_head_flops_per_output_token"] > 0
    assert report["burst"]["matmul_flops_per_s"] > 0
    for system in SYSTEMS:
        summary = report["burst"][system]
        share = summary["model_flops_per_s"] / report["burst"]["matmul_flops_per_s"]
        assert summary["share_of_matmul_flops_per_s"] == share
        # At the matmul rate, the system's FLOP/s would be the matmul rate: the ceiling scales by 1/share.
        ceiling = report["burst"]["output_tokens_per_s_at_matmul_rate"]
        assert ceiling == pytest.approx(summary["output_tokens_per_s"] / share)


@pytest.fixture(scope="module")
def repeated_burst(small_settings) -> dict:
    return run_bench(replace(small_settings, modes=("burst",), repeats=3))["burst"]


def test_repeats_report_each_systems_median_run_and_the_median_of_each_rounds_ratio(repeated_burst):
    for system in SYSTEMS:
        runs = repeated_burst[system]["output_tokens_per_s_runs"]
        assert len(runs) == 3
        assert repeated_burst[system]["output_tokens_per_s"] == sorted(runs)[1]
    # The ratio is of paired rounds, so it need not be the ratio of the two medians; it lies within
    # the rounds' ratios.
    engine_runs, baseline_runs = (
        repeated_burst[name]["output_tokens_per_s_runs"] for name in ("engine", "baseline")
    )
    round_ratios = [engine / baseline for engine, baseline in zip(engine_runs, baseline_runs, strict=True)]
    assert repeated_burst["engine_over_baseline"]["output_tokens_per_s"] == sorted(round_ratios)[1]


def test_repeats_measure_the_matmul_rate_every_round_and_share_the_best(repeated_burst):
    rates = repeated_burst["matmul_flops_per_s_runs"]
    assert len(rates) == 3
    assert repeated_burst["matmul_flops_per_s"] == max(rates)
    for system in SYSTEMS:
        summary = repeated_burst[system]
        assert summary["share_of_matmul_flops_per_s"] == summary["model_flops_per_s"] / max(rates)


def test_one_run_reports_no_list_of_runs(report):
    assert "output_tokens_per_s_runs" not in report["burst"]["engine"]
    assert "matmul_flops_per_s_runs" not in report["burst"]


@pytest.mark.parametrize("repeats", ["0", "-2", "two"])
def test_repeats_must_be_a_whole_number_of_at_least_one(repeats, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--repeats", repeats])
    assert exit_info.value.code == 2
    assert "--repeats" in capsys.readouterr().err


@pytest.mark.slow
def test_http_mode_serves_the_same_tokens_through_a_real_server_both_ways(small_settings):
    report = run_bench(replace(small_settings, http=True, modes=("burst",)))
    burst = report["burst"]
    in_process = burst["engine"]
    http_systems = (
        ("engine_http", "http_over_in_process"),
        ("engine_http_one_process", "http_one_process_over_in_process"),
    )
    for name, ratios in http_systems:
        over_http = burst[name]
        assert over_http["requests"] == small_settings.num_requests
        assert over_http["output_tokens"] == in_process["output_tokens"]
        ratio = burst[ratios]["output_tokens_per_s"]
        assert ratio == over_http["output_tokens_per_s"] / in_process["output_tokens_per_s"]
        # The server's CPU is other processes': the clients' is counted apart, and only over HTTP.
        assert over_http["cpu"]["clients_cpu_s"] >= 0
    assert "clients_cpu_s" not in in_process["cpu"]
    for summary in (in_process, burst["engine_http"], burst["engine_http_one_process"]):
        cpu = summary["cpu"]
        # Counted in clock ticks, which this small a run may take less than one of (test_bench_cpu_use
        # checks the counting itself).
        assert cpu["server_cpu_s"] >= 0 and cpu["event_loop_cpu_s"] >= 0
        assert cpu["server_cores_busy"] == cpu["server_cpu_s"] / summary["duration_s"]
        per_token = cpu["event_loop_cpu_s"] / summary["output_tokens"] * 1e6
        assert cpu["event_loop_cpu_us_per_output_token"] == pytest.approx(per_token)


def test_transformers_continuous_batching_gets_a_cache_for_the_workload_not_for_free_memory():
    """Left to size its cache from free memory, transformers' manager took most of the host's RAM."""
    workload = [WorkItem(f"r{i}", [1] * 300, 100, 0.0) for i in range(4)]
    cache = cache_for_workload(workload, torch.device("cpu"))
    assert cache.num_blocks is not None and cache.max_memory_percent is None
    assert (cache.num_blocks - 1) * cache.page_size >= sum(400 for _ in workload)
    assert cache.num_blocks * cache.page_size < 3 * sum(400 for _ in workload)


def test_transformers_continuous_batching_runs_with_its_cuda_graphs_where_there_is_cuda():
    """The issue's peer is `generate_batch` with its CUDA-graph option on; its own default turns the
    graphs off for attention that needs a mask (the paged SDPA it picks), so it is asked for them."""
    workload = [WorkItem("r", [1] * 8, 4, 0.0)]
    assert cache_for_workload(workload, torch.device("cuda")).use_cuda_graph is True
    assert cache_for_workload(workload, torch.device("cpu")).use_cuda_graph is False


def test_flops_count_two_per_linear_weight_and_the_head_only_for_output_tokens(tiny_loaded):
    model = tiny_loaded.model
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    linear_weights = sum(module.weight.numel() for module in linears)
    head_weights = model.get_output_embeddings().weight.numel()
    assert model_flops(model, 10, 0) == 10 * 2 * (linear_weights - head_weights)
    assert model_flops(model, 0, 3) == 3 * 2 * linear_weights


def test_static_batches_are_full_batches_in_arrival_order(tiny_loaded):
    workload = make_workload(6, (3, 6), (2, 2), len(byte_level_tokenizer()), None, seed=1)
    model = tiny_loaded.model
    batch_sizes: list[int] = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        batch_sizes.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    model.generate = recording_generate
    try:
        timings = run_static_batches(tiny_loaded, 4, workload)
    finally:
        del model.generate
    assert batch_sizes[1:] == [4, 2]  # after the one-request warm-up
    assert [len(timing.token_times) for timing in timings] == [2] * 6
