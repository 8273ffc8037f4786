"""The structured-output benchmark's report on a small workload (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.bench.structured import build_parser, run


@pytest.mark.parametrize("share", ["1", "0.5"])
def test_schema_runs_produce_about_as_many_tokens_as_plain_ones(tiny_model_dir: Path, share: str) -> None:
    flags = ["--structured-output", "--model-path", str(tiny_model_dir), "--num-requests", "6"]
    args = build_parser().parse_args([*flags, "--max-num-seqs", "4", "--min-length-share", share])
    report = run(args)
    assert report["workload"]["schema"]["properties"]["answer"]["minLength"] == round(float(share) * 128) - 16
    tokens = report["output_tokens"]
    # The comparison of tokens/s is fair only when both runs produce nearly as much output.
    assert 0.8 * tokens["schema_off"] <= tokens["schema_on"] <= tokens["schema_off"]
    assert report["grammar_compile_s"]["cached"] < report["grammar_compile_s"]["cold"]
    ratio = report["output_tokens_per_s"]["schema_on"] / report["output_tokens_per_s"]["schema_off"]
    assert report["schema_on_over_off"]["output_tokens_per_s"] == ratio
