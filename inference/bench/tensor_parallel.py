"""`python -m inference bench --tensor-parallel-size N`: the model whole in one process against the
model split over N ranks, with its embedding and LM head split by vocabulary (what `serve` does) and
replicated on every rank, on the same workload in one run.

Prints JSON: per variant, the weight bytes rank 0 holds, output tokens/s, time to first token and
inter-token latency; and each split variant's ratios over the single process.
"""

from __future__ import annotations

import argparse
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from inference.bench.serving import BenchSettings, length_range, run_engine
from inference.bench.shapes import add_model_arguments, model_directory
from inference.bench.workload import WorkItem, make_workload, summarize
from inference.config import ServerConfig, default_torch_threads
from inference.model_loading import load_model

# (variant, split over the ranks, embedding and LM head split by vocabulary)
_VARIANTS = (
    ("single_process", False, False),
    ("vocabulary_parallel", True, True),
    ("replicated", True, False),
)


def weight_bytes(model: nn.Module) -> int:
    tensors = chain(model.parameters(), model.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _ratios(split: dict, whole: dict) -> dict[str, float]:
    return {
        "weight_bytes_per_rank": split["weight_bytes_per_rank"] / whole["weight_bytes_per_rank"],
        "output_tokens_per_s": split["output_tokens_per_s"] / whole["output_tokens_per_s"],
        "ttft_p50": split["ttft_s"]["p50"] / whole["ttft_s"]["p50"],
        "inter_token_latency_p50": (
            split["inter_token_latency_s"]["p50"] / whole["inter_token_latency_s"]["p50"]
        ),
    }


def run_variant(
    config: ServerConfig, split_vocabulary: bool, settings: BenchSettings, workload: list[WorkItem]
) -> dict[str, object]:
    loaded = load_model(config, split_vocabulary=split_vocabulary)
    try:
        held = weight_bytes(loaded.model)
        timings = run_engine(loaded, settings, workload).timings
    finally:
        loaded.close()
    return {"weight_bytes_per_rank": held, **summarize(timings)}


def run_bench(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    threads = args.threads or default_torch_threads()
    torch.set_num_threads(threads)
    settings = BenchSettings(max_num_seqs=args.max_num_seqs, torch_threads=threads)
    whole = ServerConfig(model_path=model_dir, device=args.device, dtype=args.dtype, torch_threads=threads)
    vocab_size = AutoConfig.from_pretrained(model_dir, local_files_only=True).vocab_size
    workload = make_workload(
        args.num_requests, args.prompt_tokens, args.output_tokens, vocab_size, None, args.seed
    )
    report: dict[str, object] = {
        "model": args.model_path.name if args.model_path else args.shape,
        "tensor_parallel_size": args.tensor_parallel_size,
        "torch_threads_per_rank": threads,
        "workload": {
            "num_requests": args.num_requests,
            "prompt_tokens": list(args.prompt_tokens),
            "output_tokens": list(args.output_tokens),
            "seed": args.seed,
        },
    }
    for variant, split, split_vocabulary in _VARIANTS:
        config = whole.model_copy(update={"tensor_parallel_size": args.tensor_parallel_size if split else 1})
        report[variant] = run_variant(config, split_vocabulary, settings, workload)
    single = report["single_process"]
    report["over_single_process"] = {
        variant: _ratios(report[variant], single) for variant, split, _ in _VARIANTS if split
    }
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference bench --tensor-parallel-size N", description=__doc__
    )
    add_model_arguments(parser, default_shape="llama-50m")
    parser.add_argument("--tensor-parallel-size", type=int, required=True)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=length_range, default=(16, 128), metavar="MIN:MAX")
    parser.add_argument("--output-tokens", type=length_range, default=(16, 64), metavar="MIN:MAX")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per rank (default: as `serve`)"
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    with model_directory(args.model_path, args.shape) as model_dir:
        return run_bench(args, model_dir)
