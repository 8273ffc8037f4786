"""`python -m inference bench --decode-attention`: each decode attention over three block layouts of
one pool (no timing asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from inference.bench.cli import main
from inference.bench.decode_attention import LAYOUTS, block_tables


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_uses_each_block_of_the_pool_once(layout):
    tables = block_tables(layout, batch_size=5, blocks_per_context=7)
    assert tables.shape == (5, 7)
    assert sorted(tables.flatten().tolist()) == list(range(35))


def test_the_layouts_place_a_contexts_next_block_as_named():
    steps = {layout: block_tables(layout, 5, 7).diff(dim=1) for layout in LAYOUTS}
    assert (steps["contiguous"] == 1).all()
    assert (steps["interleaved"] == 5).all()  # a batch of blocks further on
    assert not (steps["scattered"] == 1).all() and not (steps["scattered"] == 5).all()


def test_an_unknown_layout_names_the_known_ones():
    with pytest.raises(ValueError, match="contiguous, interleaved, scattered"):
        block_tables("striped", 2, 2)


@pytest.mark.parametrize(
    ("kv_cache_dtype", "stored", "element_bytes"),
    [("auto", "float32", 4), ("fp8", "float8_e4m3fn", 1), ("fp8_e5m2", "float8_e5m2", 1)],
)
def test_the_paged_kernel_and_sdpa_agree_on_every_layout(capsys, kv_cache_dtype, stored, element_bytes):
    argv = ["--decode-attention", "--shape", "small", "--dtype", "float32",
            "--kv-cache-dtype", kv_cache_dtype, "--batch-size", "3", "--context-tokens", "37",
            "--block-size", "8", "--calls", "2", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["paged_kernel"] == "inference.engine.cpu_decode.paged_decode_attention"
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["kv_cache_dtype"] == stored
    kv_elements = 2 * 3 * 37 * report["kv_heads"] * report["head_dim"]
    assert report["kv_bytes_read_per_call"] == kv_elements * element_bytes
    assert set(report["layouts"]) == set(LAYOUTS)
    for measured in report["layouts"].values():
        assert measured["max_abs_difference"] < 1e-4
        for way in ("paged", "gathered"):
            assert measured[way]["median_ms"] > 0
            assert measured[way]["kv_bytes_read_per_s"] == pytest.approx(
                report["kv_bytes_read_per_call"] / (measured[way]["median_ms"] / 1000)
            )
        speedup = measured["gathered"]["median_ms"] / measured["paged"]["median_ms"]
        assert measured["paged_speedup"] == pytest.approx(speedup)
