"""`python -m inference bench --step-profile`: per-phase decode step times (no timing asserted)."""

from __future__ import annotations

import json

from inference.bench.cli import main
from inference.bench.step_profile import HOST_PHASES, PHASES
from inference.config import ServerConfig
from inference.model_loading import load_model
from inference.quantize.memory import model_weight_bytes


def test_the_step_profile_reports_every_phase_per_batch_size(tiny_model_dir, capsys):
    argv = ["--step-profile", "--model-path", str(tiny_model_dir), "--batch-sizes", "1", "3",
            "--prompt-tokens", "5", "--steps", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [batch["batch_size"] for batch in report["batches"]] == [1, 3]
    for batch in report["batches"]:
        medians = batch["median_ms"]
        assert set(medians) == set(PHASES) and all(value > 0 for value in medians.values())
        assert batch["host_ms_per_step"] == sum(medians[phase] for phase in HOST_PHASES)
        assert 0 < batch["host_share_of_step"] < 1


def test_the_step_profile_relates_the_forward_time_to_the_bytes_a_step_reads(tiny_model_dir, capsys):
    argv = ["--step-profile", "--model-path", str(tiny_model_dir), "--batch-sizes", "2",
            "--prompt-tokens", "5", "--steps", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    batch = report["batches"][0]
    assert report["copy_bytes_per_s"] > 0 and report["weight_bytes"] > 0
    assert batch["bytes_read_per_step"] == report["weight_bytes"] + batch["kv_bytes_read_per_step"]
    assert batch["bandwidth_bound_ms"] == 1000 * batch["bytes_read_per_step"] / report["copy_bytes_per_s"]



def test_a_bfloat16_model_on_packed_layers_reads_the_bytes_of_its_stock_layers(tiny_model_dir, capsys):
    stock = load_model(ServerConfig(model_path=tiny_model_dir, dtype="bfloat16")).model
    expected = model_weight_bytes(stock) - stock.get_input_embeddings().weight.nbytes
    argv = ["--step-profile", "--model-path", str(tiny_model_dir), "--dtype", "bfloat16",
            "--batch-sizes", "1", "--prompt-tokens", "5", "--steps", "1"]  # fmt: skip
    assert main(argv) == 0  # the engine packs the model's linear layers
    assert json.loads(capsys.readouterr().out)["weight_bytes"] == expected
