"""`python -m inference bench --quantization int8`: both models measured side by side in one run."""

from __future__ import annotations

import json

from inference.bench.cli import main as bench_main
from inference.quantize.memory import layers_bytes
from inference.quantize.swap import quantizable_linears


def test_bench_reports_the_unquantized_and_int8_runs_side_by_side(tiny_model_dir, tiny_loaded, capsys):
    argv = ["--quantization", "int8", "--model-path", str(tiny_model_dir), "--batch-sizes", "1", "2",
            "--prompt-tokens", "16", "--new-tokens", "3", "--repeats", "1"]  # fmt: skip
    assert bench_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    baseline, quantized = report["runs"]
    assert (baseline["scheme"], quantized["scheme"]) == ("none", "int8-dynamic")
    float_layers = layers_bytes(tiny_loaded.model, quantizable_linears(tiny_loaded.model))
    assert baseline["quantized_layers_bytes"] == float_layers
    assert set(baseline["batches"]) == set(quantized["batches"]) == {"1", "2"}
