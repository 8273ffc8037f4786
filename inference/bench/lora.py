"""`python -m inference bench --lora N`: a workload spread over N LoRA adapters against the same workload
on the base model alone, in one process, on one model.

The adapters are random (made by peft, rank `--lora-rank`, on every attention and MLP projection of a
Llama-style model, the costliest placement). Request i of the LoRA run asks for adapter i mod N, so
every step mixes all of them. Runs alternate (base, lora, lora, base, ...) `--repeats` times so that
neither always goes first on a busy machine; the JSON gives every run, the medians, and the
LoRA/base ratios of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from inference import metrics
from inference.bench.serving import drive_engine, length_range, positive_int
from inference.bench.workload import make_workload, summarize
from inference.config import ServerConfig, default_torch_threads
from inference.engine.async_engine import AsyncEngine
from inference.lora import LoraAdapter
from inference.lora.adapter import read_lora_adapter
from inference.lora.random_adapter import save_random_adapter
from inference.model_loading import LoadedModel, load_model


@dataclass(frozen=True)
class LoraBenchSettings:
    adapters: int = 4
    rank: int = 8
    model_path: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    num_requests: int = 64
    prompt_tokens: tuple[int, int] = (16, 128)
    output_tokens: tuple[int, int] = (16, 64)
    max_num_seqs: int = 64
    repeats: int = 1
    seed: int = 0
    torch_threads: int | None = None  # None: what `serve` uses


def random_adapters(loaded: LoadedModel, settings: LoraBenchSettings, scratch: Path) -> list[LoraAdapter]:
    adapters = []
    for index in range(settings.adapters):
        name = f"adapter-{index}"
        seed = settings.seed + index
        directory = save_random_adapter(loaded.model, scratch / name, seed=seed, rank=settings.rank)
        adapters.append(read_lora_adapter(name, directory, loaded.device, loaded.dtype))
    return adapters


@contextlib.contextmanager
def _serving(loaded: LoadedModel, adapters: list[LoraAdapter]) -> Iterator[None]:
    for adapter in adapters:
        loaded.adapters.add(adapter)
    try:
        yield
    finally:
        for adapter in adapters:
            loaded.adapters.remove(adapter.name)


def run_once(
    loaded: LoadedModel, settings: LoraBenchSettings, adapters: list[LoraAdapter]
) -> dict[str, object]:
    workload = make_workload(
        settings.num_requests, settings.prompt_tokens, settings.output_tokens, loaded.vocab_size, None,
        settings.seed,
    )  # fmt: skip
    names = [adapter.name for adapter in adapters]
    lora_names = [names[index % len(names)] if names else None for index in range(len(workload))]
    config = ServerConfig(
        max_num_seqs=settings.max_num_seqs,
        max_queue_len=len(workload),
        max_model_len=loaded.max_model_len,
        max_loras=max(1, len(adapters)),
        max_lora_rank=settings.rank,
    )

    registry = CollectorRegistry()

    async def main() -> list:
        async with AsyncEngine(loaded, config, metrics.build_collectors(registry)) as engine:
            return await drive_engine(engine, workload, lora_names=lora_names)

    cpu_started = time.process_time()
    with _serving(loaded, adapters):
        summary = summarize(asyncio.run(main()))
    # On a shared machine the process's CPU time is the steadier measure of what a run cost.
    cpu_time = time.process_time() - cpu_started
    tokens_by_model = {
        name: registry.get_sample_value(metrics.GENERATION_TOKENS.name, {"model": name}) or 0.0
        for name in [loaded.name, *names]
    }
    return {**summary, "cpu_time_s": cpu_time, "generation_tokens_by_model": tokens_by_model}


_FIGURES = {
    "output_tokens_per_s": ("output_tokens_per_s",),
    "duration_s": ("duration_s",),
    "cpu_time_s": ("cpu_time_s",),
    "ttft_p50_s": ("ttft_s", "p50"),
    "inter_token_latency_p50_s": ("inter_token_latency_s", "p50"),
}


def _median(runs: list[dict], path: tuple[str, ...]) -> float:
    def value(run: dict) -> float:
        for key in path:
            run = run[key]
        return run  # type: ignore[return-value]

    return statistics.median(value(run) for run in runs)


def run_lora_bench(settings: LoraBenchSettings) -> dict[str, object]:
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    loaded = load_model(ServerConfig(
        model_path=settings.model_path, device=settings.device, dtype=settings.dtype,
        max_loras=settings.adapters, max_lora_rank=settings.rank,
    ))  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        adapters = random_adapters(loaded, settings, Path(scratch))
    runs: dict[str, list[dict]] = {"base": [], "lora": []}
    for repeat in range(settings.repeats):
        order = ("base", "lora") if repeat % 2 == 0 else ("lora", "base")
        for label in order:
            runs[label].append(run_once(loaded, settings, adapters if label == "lora" else []))
    medians = {
        label: {figure: _median(runs[label], path) for figure, path in _FIGURES.items()} for label in runs
    }
    base, lora = medians["base"], medians["lora"]
    return {
        "model": loaded.name,
        "device": loaded.device.type,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "settings": {**asdict(settings), "model_path": str(settings.model_path or "tiny-demo")},
        "median": medians,
        "lora_over_base": {
            "output_tokens_per_s": lora["output_tokens_per_s"] / base["output_tokens_per_s"],
            "ttft_p50": lora["ttft_p50_s"] / base["ttft_p50_s"],
            "inter_token_latency_p50": lora["inter_token_latency_p50_s"] / base["inter_token_latency_p50_s"],
            "cpu_time": lora["cpu_time_s"] / base["cpu_time_s"],
        },
        "runs": runs,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference bench --lora", description=__doc__)
    defaults = LoraBenchSettings()
    parser.add_argument("--lora", dest="adapters", type=int, required=True, metavar="N", help="adapters")
    parser.add_argument("--lora-rank", dest="rank", type=int, default=defaults.rank)
    parser.add_argument("--model-path", type=Path, default=None, help="default: the tiny demo model")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=defaults.dtype)
    parser.add_argument("--num-requests", type=int, default=defaults.num_requests)
    for field in ("prompt_tokens", "output_tokens"):
        flag, default = f"--{field.replace('_', '-')}", getattr(defaults, field)
        parser.add_argument(flag, type=length_range, default=default, metavar="MIN:MAX")
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="runs of each setting")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as `serve`)")
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    fields = LoraBenchSettings.__dataclass_fields__
    given = {field: value for field, value in vars(args).items() if field in fields}
    return run_lora_bench(LoraBenchSettings(**given, torch_threads=args.threads))
