"""`python -m inference bench --tensor-parallel-size 2`: the whole model against its split variants, each
figure measured in the same run (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from inference.bench.cli import main

pytestmark = pytest.mark.slow


def test_the_report_compares_both_split_variants_with_the_single_process(tiny_model_dir, capsys):
    argv = ["--tensor-parallel-size", "2", "--model-path", str(tiny_model_dir), "--num-requests", "2",
            "--prompt-tokens", "4:8", "--output-tokens", "2:3"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    single, vocabulary, replicated = (
        report[name] for name in ("single_process", "vocabulary_parallel", "replicated")
    )
    assert single["output_tokens"] == vocabulary["output_tokens"] == replicated["output_tokens"] > 0
    # Splitting the vocabulary leaves each rank fewer bytes than replicating the embedding and LM head.
    held = [variant["weight_bytes_per_rank"] for variant in (vocabulary, replicated, single)]
    assert held == sorted(set(held))
    ratios = report["over_single_process"]["vocabulary_parallel"]
    assert ratios["weight_bytes_per_rank"] == held[0] / held[2]
    assert ratios["output_tokens_per_s"] == vocabulary["output_tokens_per_s"] / single["output_tokens_per_s"]
