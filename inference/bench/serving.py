"""`python -m inference bench`: the engine against the seed's batching, on the same workload, in one run.

Two arrival patterns: every request at once (`burst`) and Poisson arrivals at a steady rate
(`steady`; by default 1.5x the request rate the baseline sustains, measured in the same run). For
each, the systems serve the same requests in-process (no HTTP, so that the comparison is of
batching alone) and the run prints JSON: output tokens/s, time to first token and inter-token
latency percentiles per system, the engine's ratios to each, and how close each came to the
machine (model FLOP/s against the matmul FLOP/s of the model's own shapes, measured before every
round, the best kept), and the output tokens/s a system would reach if every FLOP of the workload
ran at that matmul rate: a ceiling for ratios (prefill's larger matmuls can run a little faster than
the decode-sized ones measured).
`--peers` adds `transformers`' static padded batches and its own continuous batching to the systems;
`--http` adds the engine behind a real `serve` process, driven by concurrent streaming clients: with
its engine in a process of its own (`engine_http`, the default) and on a thread of the server's
process (`engine_http_one_process`, `--no-engine-process`). Every engine run reports the CPU time it
took (`cpu`: see `cpu_use`), which tells work added over HTTP from cores left idle.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch

from inference.bench import cpu_use
from inference.bench.baseline import WindowBatchingBaseline
from inference.bench.flops import flops_per_token, matmul_flops_per_second, model_flops
from inference.bench.http import run_over_http, serve_process
from inference.bench.peers import run_static_batches, run_transformers_continuous, uses_cuda_graphs
from inference.bench.shapes import add_model_arguments, model_directory
from inference.bench.workload import RequestTiming, WorkItem, make_workload, summarize
from inference.config import KvCacheDtype, ServerConfig, default_torch_threads
from inference.engine.async_engine import AsyncEngine
from inference.engine.grammar import CompiledGrammar
from inference.engine.request import GenerationRequest, SamplingParams
from inference.model_loading import LoadedModel, load_model

MODES = ("burst", "steady")

# Steady mode offers this multiple of the request rate the baseline sustains: below the baseline's
# capacity both systems just keep up with the offered load and their throughput is level whatever
# their batching; above it the seed's batching falls behind and requests queue, which is what the
# comparison is about. A system that keeps up delivers the offered load and no more, so in this mode
# the engine/baseline throughput ratio is at most about this multiple; the telling figure is TTFT.
STEADY_LOAD_OVER_BASELINE_CAPACITY = 1.5
# Without a burst run to measure it in, the baseline's capacity comes from a burst of this many
# batches of the workload's first requests.
CALIBRATION_BATCHES = 2


@dataclass(frozen=True)
class SystemRun:
    timings: list[RequestTiming]
    cpu: cpu_use.CpuUse | None = None  # measured for the engine, in-process and over HTTP


@dataclass(frozen=True)
class BenchModels:
    """The checkpoint loaded twice. The engine changes the model it runs (packed linear layers, its
    kernels' forwards, its attention); the baseline and `transformers`' peers run the stock model, as
    their users would, however many engine runs came before."""

    engine: LoadedModel
    peers: LoadedModel


@dataclass(frozen=True)
class BenchSettings:
    model_path: Path | None = None
    shape: str = "tiny"  # the random model made when model_path is None (inference.bench.shapes)
    device: str = "auto"
    dtype: str = "auto"
    num_requests: int = 128
    prompt_tokens: tuple[int, int] = (16, 256)
    output_tokens: tuple[int, int] = (16, 128)
    rate_per_second: float | None = None  # steady mode; None: see STEADY_LOAD_OVER_BASELINE_CAPACITY
    modes: tuple[str, ...] = MODES
    max_num_seqs: int = 64
    # The baseline batches as the seed server did: up to 16 requests or 50 ms.
    max_batch_size: int = 16
    batch_window_seconds: float = 0.05
    seed: int = 0
    torch_threads: int | None = None  # None: what `serve` uses (inference.config.default_torch_threads)
    peers: bool = False  # also run transformers' static batches and its continuous batching
    http: bool = False  # also run the engine behind `serve`, over HTTP
    static_batch_size: int = 32
    # The engine's (`--kv-cache-dtype`): a narrower one makes its outputs differ from the others'.
    kv_cache_dtype: KvCacheDtype = "auto"
    repeats: int = 1  # rounds of every system; medians reported


async def drive_engine(
    engine: AsyncEngine,
    workload: list[WorkItem],
    grammars: list[CompiledGrammar] | None = None,
    lora_names: list[str | None] | None = None,
) -> list[RequestTiming]:
    """Submit each item greedily at its arrival offset (its output constrained by the grammar, and to
    the LoRA adapter, that `grammars` and `lora_names` give it, if given); when each of its tokens came
    back."""
    start = time.monotonic()

    async def one(item: WorkItem, grammar: CompiledGrammar | None, lora_name: str | None) -> RequestTiming:
        await asyncio.sleep(max(0.0, start + item.arrival_offset - time.monotonic()))
        arrival = time.monotonic()
        sampling = SamplingParams(
            max_tokens=item.max_tokens, temperature=0.0, ignore_eos=True, grammar=grammar
        )
        request = GenerationRequest(item.request_id, item.prompt_token_ids, sampling, lora_name=lora_name)
        return RequestTiming(arrival, [time.monotonic() async for _ in engine.generate(request)])

    names = lora_names if lora_names is not None else [None] * len(workload)
    constraints = grammars if grammars is not None else [None] * len(workload)
    requests = zip(workload, constraints, names, strict=True)
    return list(await asyncio.gather(*(one(item, grammar, name) for item, grammar, name in requests)))


def run_engine(loaded: LoadedModel, settings: BenchSettings, workload: list[WorkItem]) -> SystemRun:
    config = ServerConfig(
        max_num_seqs=settings.max_num_seqs,
        max_queue_len=len(workload),
        max_model_len=loaded.max_model_len,
        kv_cache_dtype=settings.kv_cache_dtype,
    )

    async def main() -> SystemRun:
        async with AsyncEngine(loaded, config) as engine:
            with cpu_use.measure() as cpu:
                timings = await drive_engine(engine, workload)
        return SystemRun(timings, cpu)

    return asyncio.run(main())


def run_baseline(loaded: LoadedModel, settings: BenchSettings, workload: list[WorkItem]) -> SystemRun:
    tokenizer = loaded.tokenizer
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    baseline = WindowBatchingBaseline(
        loaded.model, pad_token_id, settings.max_batch_size, settings.batch_window_seconds
    )
    return SystemRun(baseline.run(workload))


def run_engine_over_http(
    model_dir: Path,
    loaded: LoadedModel,
    settings: BenchSettings,
    workload: list[WorkItem],
    engine_process: bool,
) -> SystemRun:
    server_settings = {
        "max_num_seqs": settings.max_num_seqs, "max_queue_len": len(workload),
        "max_model_len": loaded.max_model_len, "device": settings.device, "dtype": settings.dtype,
        "kv_cache_dtype": settings.kv_cache_dtype, "engine_process": engine_process,
    }  # fmt: skip
    with serve_process(model_dir, server_settings, torch.get_num_threads()) as server:
        with cpu_use.measure(server.pid) as cpu:
            timings = run_over_http(server.base_url, workload)
        return SystemRun(timings, cpu)


# The engine behind `serve`: in its own process (the default), and on a thread of the server's process.
HTTP_SYSTEMS = {"engine_http": True, "engine_http_one_process": False}


def run_systems(
    model_dir: Path, models: BenchModels, settings: BenchSettings, workload: list[WorkItem]
) -> dict[str, SystemRun]:
    """Each system's run of `workload`, the systems run one after another on the same weights."""
    peers = models.peers
    systems = {"baseline": lambda: run_baseline(peers, settings, workload)}
    if settings.peers:
        static_size = settings.static_batch_size
        systems["transformers_static"] = lambda: SystemRun(run_static_batches(peers, static_size, workload))
        systems["transformers_continuous"] = lambda: SystemRun(run_transformers_continuous(peers, workload))
    systems["engine"] = lambda: run_engine(models.engine, settings, workload)
    if settings.http:
        for name, engine_process in HTTP_SYSTEMS.items():
            systems[name] = functools.partial(
                run_engine_over_http, model_dir, models.engine, settings, workload, engine_process
            )
    return {name: run_system() for name, run_system in systems.items()}


def _ratios(engine: dict, baseline: dict) -> dict[str, float]:
    return {
        "output_tokens_per_s": engine["output_tokens_per_s"] / baseline["output_tokens_per_s"],
        "ttft_p50": engine["ttft_s"]["p50"] / baseline["ttft_s"]["p50"],
        "inter_token_latency_p50": engine["inter_token_latency_s"]["p50"]
        / baseline["inter_token_latency_s"]["p50"],
    }


def ratio_pairs(systems: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each ratio the report gives, as (numerator, denominator): the engine over every other system
    in-process, and each HTTP system over the engine in-process."""
    pairs = {}
    for name in systems:
        if name in HTTP_SYSTEMS:
            pairs[f"{name.removeprefix('engine_')}_over_in_process"] = (name, "engine")
        elif name != "engine":
            pairs[f"engine_over_{name}"] = ("engine", name)
    return pairs


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput (the lower of the middle two of an even count), with every run's
    throughput beside it when there are several."""
    ordered = sorted(runs, key=lambda run: run["output_tokens_per_s"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        median["output_tokens_per_s_runs"] = [run["output_tokens_per_s"] for run in runs]
    return median


def median_ratios(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(ratios[key] for ratios in rounds) for key in rounds[0]}


def run_bench(settings: BenchSettings) -> dict[str, object]:
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    with model_directory(settings.model_path, settings.shape) as model_dir:
        config = ServerConfig(model_path=model_dir, device=settings.device, dtype=settings.dtype)
        return _run_bench(model_dir, BenchModels(load_model(config), load_model(config)), settings)


def _run_bench(model_dir: Path, models: BenchModels, settings: BenchSettings) -> dict[str, object]:
    loaded = models.engine
    layer_flops, head_flops = flops_per_token(loaded.model)
    report: dict[str, object] = {
        "model": loaded.name,
        "device": loaded.device.type,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "engine_kv_cache_dtype": settings.kv_cache_dtype,
        "torch_threads": torch.get_num_threads(),
        "workload": {
            "num_requests": settings.num_requests,
            "prompt_tokens": list(settings.prompt_tokens),
            "output_tokens": list(settings.output_tokens),
            "seed": settings.seed,
        },
        "baseline": {
            "max_batch_size": settings.max_batch_size,
            "batch_window_s": settings.batch_window_seconds,
        },
        "machine": {
            "layer_flops_per_token": layer_flops,
            "lm_head_flops_per_output_token": head_flops,
            "matmul_rows": settings.max_num_seqs,
        },
    }
    if settings.peers:
        report["transformers_static"] = {"batch_size": settings.static_batch_size}
        report["transformers_continuous"] = {"cuda_graphs": uses_cuda_graphs(loaded.device)}

    def workload(rate: float | None) -> list[WorkItem]:
        return make_workload(
            settings.num_requests,
            settings.prompt_tokens,
            settings.output_tokens,
            loaded.vocab_size,
            rate,
            settings.seed,
        )

    def summaries_of(runs: dict[str, SystemRun], flops: int, matmul_rate: float) -> dict[str, dict]:
        summaries = {}
        for name, run in runs.items():
            summary = summarize(run.timings)
            summary["model_flops_per_s"] = flops / summary["duration_s"]
            summary["share_of_matmul_flops_per_s"] = summary["model_flops_per_s"] / matmul_rate
            if run.cpu is not None:
                summary["cpu"] = run.cpu.report(summary["duration_s"], summary["output_tokens"])
            summaries[name] = summary
        return summaries

    def compare(rate: float | None) -> dict[str, object]:
        requests = workload(rate)
        prompt_tokens = sum(len(item.prompt_token_ids) for item in requests)
        output_tokens = sum(item.max_tokens for item in requests)
        flops = model_flops(loaded.model, prompt_tokens, output_tokens)
        # Round after round of every system, so that a slow spell of a shared machine falls on all of
        # them alike; each ratio is the median of its rounds' ratios. The matmul rate is measured
        # before every round and the best taken: one measurement of a second or so, caught in a slow
        # spell, made every share look higher than it was.
        matmul_rates, runs = [], []
        for _ in range(settings.repeats):
            matmul_rates.append(
                matmul_flops_per_second(loaded.model, settings.max_num_seqs, loaded.device, loaded.dtype)
            )
            runs.append(run_systems(model_dir, models, settings, requests))
        matmul_rate = max(matmul_rates)
        rounds = [summaries_of(systems, flops, matmul_rate) for systems in runs]
        summaries = {name: median_run([systems[name] for systems in rounds]) for name in rounds[0]}
        ratios = {
            key: median_ratios([_ratios(systems[numerator], systems[denominator]) for systems in rounds])
            for key, (numerator, denominator) in ratio_pairs(rounds[0]).items()
        }
        return {
            "arrival_rate_per_s": rate,
            "matmul_flops_per_s": matmul_rate,
            **({"matmul_flops_per_s_runs": matmul_rates} if len(matmul_rates) > 1 else {}),
            "output_tokens_per_s_at_matmul_rate": output_tokens * matmul_rate / flops,
            **summaries,
            **ratios,
        }

    if "burst" in settings.modes:
        report["burst"] = compare(None)
    if "steady" in settings.modes:
        if settings.rate_per_second is not None:
            rate, source = settings.rate_per_second, "--rate"
        else:
            if "burst" in report:
                capacity, measured_in = report["burst"]["baseline"]["requests_per_s"], "burst"
            else:
                calibration = workload(None)[: CALIBRATION_BATCHES * settings.max_batch_size]
                calibrated = run_baseline(models.peers, settings, calibration)
                capacity = summarize(calibrated.timings)["requests_per_s"]
                measured_in = f"a calibration burst of {len(calibration)} requests"
            rate = STEADY_LOAD_OVER_BASELINE_CAPACITY * capacity
            source = f"{STEADY_LOAD_OVER_BASELINE_CAPACITY}x baseline capacity measured in {measured_in}"
        report["steady"] = {**compare(rate), "rate_source": source}
    return report


def length_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    bounds = (int(low), int(high or low))
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return bounds


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference bench",
        description=__doc__,
        epilog="With --quantization int8 it compares the unquantized and the int8 model instead; "
        "see `python -m inference bench --quantization int8 --help`.",
    )
    defaults = BenchSettings()
    add_model_arguments(parser, default_shape=defaults.shape)
    parser.add_argument(
        "--peers", action="store_true", help="also run transformers' static batches and continuous batching"
    )
    parser.add_argument("--static-batch-size", type=int, default=defaults.static_batch_size)
    parser.add_argument(
        "--http", action="store_true", help="also run the engine behind `serve`, with streaming HTTP clients"
    )
    parser.add_argument("--num-requests", type=int, default=defaults.num_requests)
    parser.add_argument(
        "--prompt-tokens", type=length_range, default=defaults.prompt_tokens, metavar="MIN:MAX"
    )
    parser.add_argument(
        "--output-tokens", type=length_range, default=defaults.output_tokens, metavar="MIN:MAX"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=defaults.rate_per_second,
        help=f"steady mode's arrival rate, requests/s (default: {STEADY_LOAD_OVER_BASELINE_CAPACITY}x "
        "the rate the baseline sustains, measured in the burst run or in a short calibration run)",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(defaults.modes))
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--repeats", type=positive_int, default=defaults.repeats,
        help="rounds of every system, one after another: each system's run of median throughput is "
        "reported, with every run's throughput, and each ratio is the median of the rounds' ratios",
    )  # fmt: skip
    parser.add_argument(
        "--kv-cache-dtype", choices=get_args(KvCacheDtype), default=defaults.kv_cache_dtype,
        help="the engine's KV cache dtype (not exact: its outputs then differ from the other systems')",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both systems (default: as `serve`)"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        model_path=args.model_path,
        shape=args.shape,
        device=args.device,
        dtype=args.dtype,
        num_requests=args.num_requests,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        rate_per_second=args.rate,
        modes=tuple(args.modes),
        max_num_seqs=args.max_num_seqs,
        seed=args.seed,
        torch_threads=args.threads,
        peers=args.peers,
        http=args.http,
        static_batch_size=args.static_batch_size,
        kv_cache_dtype=args.kv_cache_dtype,
        repeats=args.repeats,
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    return run_bench(settings_from_args(args))
