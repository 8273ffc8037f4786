"""The unquantized model beside its int8 versions, in one process, through the serving engine.

Prints JSON: weight bytes, output tokens/s, time to first token and request latency at each batch
size for every variant, the ratios to the unquantized run, and how far the int8 logits are from
the unquantized ones on a fixed prompt set. Run as `python -m inference bench --quantization int8`.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.bench.shapes import add_model_arguments, model_directory
from inference.config import ServerConfig
from inference.engine.core import EngineCore
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sequence import Sequence
from inference.model_loading import LoadedModel, load_model
from inference.quantize.accuracy import logits_agreement, prompt_logits
from inference.quantize.memory import layers_bytes, model_weight_bytes
from inference.quantize.schemes import SCHEMES
from inference.quantize.swap import int8_modules, quantizable_linears

RATIO_FIGURES = ("output_tokens_per_s", "decode_tokens_per_s", "mean_latency_ms")


@dataclass(frozen=True)
class Workload:
    batch_sizes: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    device: str
    dtype: str
    repeats: int

    def server_config(self, model_dir: Path, quantization: str) -> ServerConfig:
        largest = max(self.batch_sizes)
        return ServerConfig(
            model_path=model_dir,
            quantization=quantization,
            device=self.device,
            dtype=self.dtype,
            max_num_seqs=largest,
            max_num_batched_tokens=max(2048, largest * self.prompt_tokens),
            max_model_len=self.prompt_tokens + self.new_tokens,
            # Bounded anyway by max_num_seqs sequences of max_model_len tokens.
            kv_cache_memory_bytes=1 << 40,
        )


def run_batch(core: EngineCore, workload: Workload, batch_size: int, vocab_size: int) -> dict[str, float]:
    rng = random.Random(batch_size)
    sampling = SamplingParams(max_tokens=workload.new_tokens, temperature=0.0, ignore_eos=True)
    prompts = [[rng.randrange(vocab_size) for _ in range(workload.prompt_tokens)] for _ in range(batch_size)]
    requests = [GenerationRequest(f"bench-{index}", prompt, sampling) for index, prompt in enumerate(prompts)]
    sequences = [Sequence.from_request(request, time.perf_counter()) for request in requests]
    first_token: dict[str, float] = {}
    finished: dict[str, float] = {}
    start = time.perf_counter()
    for seq in sequences:
        core.add(seq)
    while len(finished) < batch_size:
        outputs = core.step()
        now = time.perf_counter()
        for output in outputs:
            first_token.setdefault(output.seq.request_id, now)
            if output.event.finish_reason is not None:
                finished[output.seq.request_id] = now
    end = time.perf_counter()
    output_tokens = batch_size * workload.new_tokens
    decode_tokens = batch_size * (workload.new_tokens - 1)
    return {
        "output_tokens_per_s": output_tokens / (end - start),
        "decode_tokens_per_s": decode_tokens / (end - max(first_token.values())),
        "mean_ttft_ms": 1000 * sum(t - start for t in first_token.values()) / batch_size,
        "mean_latency_ms": 1000 * sum(t - start for t in finished.values()) / batch_size,
    }


@dataclass
class Variant:
    quantization: str
    loaded: LoadedModel
    core: EngineCore
    figures: dict[str, Any]
    logits: list[torch.Tensor]
    batches: dict[str, dict[str, float]]


def load_variant(model_dir: Path, quantization: str, workload: Workload) -> Variant:
    config = workload.server_config(model_dir, quantization)
    memory_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    loaded = load_model(config)
    quantized_names = list(int8_modules(loaded.model)) or quantizable_linears(loaded.model)
    figures: dict[str, Any] = {
        "quantization": quantization,
        "scheme": loaded.quantization,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "weights_bytes": model_weight_bytes(loaded.model),
        "quantized_layers_bytes": layers_bytes(loaded.model, quantized_names),
    }
    if loaded.device.type == "cuda":
        figures["device_memory_bytes"] = torch.cuda.memory_allocated() - memory_before
    # Logits before the engine exists: once it does, the model's attention runs only inside its steps.
    logits = prompt_logits(loaded.model, loaded.tokenizer)
    return Variant(quantization, loaded, EngineCore(loaded, config), figures, logits, {})


def measure(variants: list[Variant], workload: Workload) -> None:
    """Best of `repeats` runs per batch size, the variants taking turns so that a noisy neighbour on
    the machine slows all of them rather than one."""
    for variant in variants:
        run_batch(variant.core, workload, 1, variant.loaded.vocab_size)  # warm-up: allocator, kernels
    for _ in range(workload.repeats):
        for variant in variants:
            for size in workload.batch_sizes:
                figures = run_batch(variant.core, workload, size, variant.loaded.vocab_size)
                best = variant.batches.get(str(size))
                if best is None or figures["output_tokens_per_s"] > best["output_tokens_per_s"]:
                    variant.batches[str(size)] = figures


def _ratios(baseline: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    per_batch = {
        size: {name: figures[name] / baseline["batches"][size][name] for name in RATIO_FIGURES}
        for size, figures in variant["batches"].items()
    }
    return {
        "weights_bytes": variant["weights_bytes"] / baseline["weights_bytes"],
        "quantized_layers_bytes": variant["quantized_layers_bytes"] / baseline["quantized_layers_bytes"],
        "batches": per_batch,
    }


def compare_quantization(model_dir: Path, quantizations: list[str], workload: Workload) -> dict[str, Any]:
    """Run the unquantized model, then each quantization, and relate every figure to the first run."""
    variants = [load_variant(model_dir, quantization, workload) for quantization in ["none", *quantizations]]
    for variant in variants[1:]:
        variant.figures["accuracy"] = logits_agreement(variants[0].logits, variant.logits)
    measure(variants, workload)
    baseline, *quantized = [{**variant.figures, "batches": variant.batches} for variant in variants]
    return {
        "model": str(model_dir),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workload": {
            "prompt_tokens": workload.prompt_tokens,
            "new_tokens": workload.new_tokens,
            "batch_sizes": list(workload.batch_sizes),
            "repeats": workload.repeats,
        },
        "runs": [baseline, *quantized],
        "ratios_to_unquantized": {run["scheme"]: _ratios(baseline, run) for run in quantized},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference bench --quantization", description=__doc__)
    add_model_arguments(parser, default_shape="wide")
    parser.add_argument("--quantization", nargs="+", default=["int8"], choices=("int8", *SCHEMES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per batch size")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        # On a shared machine one thread per process avoids OpenMP barriers waiting on descheduled
        # threads, which otherwise penalise the kernels with the most parallel regions.
        torch.set_num_threads(args.threads)
    workload = Workload(
        tuple(args.batch_sizes), args.prompt_tokens, args.new_tokens, args.device, args.dtype, args.repeats
    )
    with model_directory(args.model_path, args.shape) as model_dir:
        return compare_quantization(model_dir, args.quantization, workload)

