"""`python -m inference bench --workload shared-prefix|multi-turn|random`: prefix caching on against off.

The same requests go through the engine with `enable_prefix_caching` off and on, in one process, on
one model, each run with a fresh engine (so the cache starts empty every time):

- `shared-prefix`: requests that all begin with one long prefix (a system prompt), each with its
  own suffix, arriving together;
- `multi-turn`: conversations that run together, each turn resending the conversation so far (its
  earlier messages and the model's answers) plus a new message;
- `random`: the default bench workload, where nothing is shared: what caching costs when it cannot help.

Runs alternate (off, on, on, off, ...) `--repeats` times so that neither setting always goes first
on a busy machine; the JSON gives every run, the medians, and on/off ratios of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from inference import metrics
from inference.bench.serving import BenchSettings, drive_engine, positive_int
from inference.bench.workload import RequestTiming, WorkItem, make_workload, summarize
from inference.config import ServerConfig, default_torch_threads
from inference.engine.async_engine import AsyncEngine
from inference.engine.request import GenerationRequest, SamplingParams
from inference.model_loading import LoadedModel, load_model
from inference.tiny_model import make_tiny_model

WORKLOADS = ("shared-prefix", "multi-turn", "random")


@dataclass(frozen=True)
class PrefixBenchSettings:
    workload: str = "shared-prefix"
    model_path: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    repeats: int = 1
    seed: int = 0
    torch_threads: int | None = None  # None: what `serve` uses
    max_num_seqs: int = 64
    max_num_batched_tokens: int = ServerConfig.model_fields["max_num_batched_tokens"].default
    # shared-prefix
    num_requests: int = 64
    prefix_tokens: int = 1024
    suffix_tokens: int = 32
    output_tokens: int = 64
    # multi-turn
    conversations: int = 16
    turns: int = 4
    message_tokens: int = 128
    answer_tokens: int = 32
    # random: the default bench workload
    random_requests: int = BenchSettings.num_requests
    random_prompt_tokens: tuple[int, int] = BenchSettings.prompt_tokens
    random_output_tokens: tuple[int, int] = BenchSettings.output_tokens

    def context_needed(self) -> int:
        return {
            "shared-prefix": self.prefix_tokens + self.suffix_tokens + self.output_tokens,
            "multi-turn": self.turns * (self.message_tokens + self.answer_tokens),
            "random": self.random_prompt_tokens[1] + self.random_output_tokens[1],
        }[self.workload]

    def describe(self) -> dict[str, object]:
        keys = {
            "shared-prefix": ("num_requests", "prefix_tokens", "suffix_tokens", "output_tokens"),
            "multi-turn": ("conversations", "turns", "message_tokens", "answer_tokens"),
            "random": ("random_requests", "random_prompt_tokens", "random_output_tokens"),
        }[self.workload]
        described = asdict(self)
        return {"name": self.workload, **{key: described[key] for key in keys}, "seed": self.seed}


def _tokens(rng: random.Random, vocab_size: int, count: int) -> list[int]:
    return [rng.randrange(vocab_size) for _ in range(count)]


def shared_prefix_workload(settings: PrefixBenchSettings, vocab_size: int) -> list[WorkItem]:
    rng = random.Random(settings.seed)
    prefix = _tokens(rng, vocab_size, settings.prefix_tokens)
    return [
        WorkItem(f"shared-{index}", prefix + _tokens(rng, vocab_size, settings.suffix_tokens),
                 settings.output_tokens, 0.0)
        for index in range(settings.num_requests)
    ]  # fmt: skip


def conversation_messages(settings: PrefixBenchSettings, vocab_size: int) -> list[list[list[int]]]:
    """Per conversation, the new message of each turn."""
    rng = random.Random(settings.seed)
    return [
        [_tokens(rng, vocab_size, settings.message_tokens) for _ in range(settings.turns)]
        for _ in range(settings.conversations)
    ]


async def _converse(
    engine: AsyncEngine, name: str, messages: list[list[int]], answer_tokens: int
) -> list[RequestTiming]:
    """One conversation, turn after turn: each prompt is the whole history plus the next message."""
    sampling = SamplingParams(max_tokens=answer_tokens, temperature=0.0, ignore_eos=True)
    history: list[int] = []
    timings = []
    for turn, message in enumerate(messages):
        prompt = history + message
        arrival = time.monotonic()
        answer, token_times = [], []
        async for event in engine.generate(GenerationRequest(f"{name}-turn-{turn}", prompt, sampling)):
            answer.append(event.token_id)
            token_times.append(time.monotonic())
        timings.append(RequestTiming(arrival, token_times))
        history = prompt + answer
    return timings


def _driver(settings: PrefixBenchSettings, vocab_size: int) -> Callable[[AsyncEngine], Awaitable[list]]:
    """What one run sends the engine; every run of a bench sends the same."""
    if settings.workload == "multi-turn":
        conversations = conversation_messages(settings, vocab_size)

        async def talk(engine: AsyncEngine) -> list[RequestTiming]:
            runs = await asyncio.gather(*(
                _converse(engine, f"conversation-{index}", messages, settings.answer_tokens)
                for index, messages in enumerate(conversations)
            ))  # fmt: skip
            return [timing for conversation in runs for timing in conversation]

        return talk
    if settings.workload == "shared-prefix":
        workload = shared_prefix_workload(settings, vocab_size)
    else:
        workload = make_workload(
            settings.random_requests, settings.random_prompt_tokens, settings.random_output_tokens,
            vocab_size, None, settings.seed,
        )  # fmt: skip
    return lambda engine: drive_engine(engine, workload)


def run_once(
    loaded: LoadedModel,
    settings: PrefixBenchSettings,
    drive: Callable[[AsyncEngine], Awaitable[list]],
    caching: bool,
) -> dict[str, object]:
    config = ServerConfig(
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_queue_len=max(settings.num_requests, settings.conversations, settings.random_requests),
        enable_prefix_caching=caching,
    )
    registry = CollectorRegistry()

    async def main() -> list[RequestTiming]:
        async with AsyncEngine(loaded, config, metrics.build_collectors(registry)) as engine:
            return await drive(engine)

    cpu_started = time.process_time()
    summary = summarize(asyncio.run(main()))
    # On a shared machine the process's CPU time is the steadier measure of what a run cost.
    cpu_time = time.process_time() - cpu_started
    queries = registry.get_sample_value(metrics.PREFIX_CACHE_QUERIES.name) or 0.0
    hits = registry.get_sample_value(metrics.PREFIX_CACHE_HITS.name) or 0.0
    return {**summary, "cpu_time_s": cpu_time, "prefix_cache_hit_rate": hits / queries if queries else 0.0}


def _median(runs: list[dict], *path: str) -> float:
    def value(run: dict) -> float:
        for key in path:
            run = run[key]
        return run  # type: ignore[return-value]

    return statistics.median(value(run) for run in runs)


_FIGURES = {
    "output_tokens_per_s": ("output_tokens_per_s",),
    "duration_s": ("duration_s",),
    "cpu_time_s": ("cpu_time_s",),
    "ttft_p50_s": ("ttft_s", "p50"),
    "ttft_p90_s": ("ttft_s", "p90"),
    "inter_token_latency_p50_s": ("inter_token_latency_s", "p50"),
    "prefix_cache_hit_rate": ("prefix_cache_hit_rate",),
}


@contextmanager
def _model_dir(settings: PrefixBenchSettings) -> Iterator[Path]:
    """The given model, or the demo model's shape with a context long enough for the workload."""
    if settings.model_path is not None:
        yield settings.model_path
        return
    with tempfile.TemporaryDirectory() as scratch:
        yield make_tiny_model(Path(scratch) / "tiny-demo", context_length=max(512, settings.context_needed()))


def run_prefix_bench(settings: PrefixBenchSettings) -> dict[str, object]:
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    with _model_dir(settings) as model_dir:
        loaded = load_model(ServerConfig(model_path=model_dir, device=settings.device, dtype=settings.dtype))
        drive = _driver(settings, loaded.vocab_size)
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for repeat in range(settings.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for caching in order:
                runs[caching].append(run_once(loaded, settings, drive, caching))
    medians = {
        label: {figure: _median(runs[caching], *path) for figure, path in _FIGURES.items()}
        for label, caching in (("caching_off", False), ("caching_on", True))
    }
    off, on = medians["caching_off"], medians["caching_on"]
    return {
        "model": loaded.name,
        "device": loaded.device.type,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "workload": settings.describe(),
        "repeats": settings.repeats,
        "median": medians,
        "on_over_off": {
            "output_tokens_per_s": on["output_tokens_per_s"] / off["output_tokens_per_s"],
            "ttft_p50": on["ttft_p50_s"] / off["ttft_p50_s"],
            "duration": on["duration_s"] / off["duration_s"],
            "cpu_time": on["cpu_time_s"] / off["cpu_time_s"],
        },
        # Each repeat's two runs ran back to back, under about the same load from anything else on the
        # machine: the median of their ratios is the steadier figure when that load varies.
        "paired_on_over_off": {
            "output_tokens_per_s": statistics.median(
                on_run["output_tokens_per_s"] / off_run["output_tokens_per_s"]
                for off_run, on_run in zip(runs[False], runs[True], strict=True)
            ),
            "cpu_time": statistics.median(
                on_run["cpu_time_s"] / off_run["cpu_time_s"]
                for off_run, on_run in zip(runs[False], runs[True], strict=True)
            ),
        },
        "runs": {"caching_off": runs[False], "caching_on": runs[True]},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference bench --workload", description=__doc__)
    defaults = PrefixBenchSettings()
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument(
        "--model-path", type=Path, default=None,
        help="default: the demo model's shape, with a context long enough for the workload",
    )  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=defaults.dtype)
    parser.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="runs of each setting")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as `serve`)")
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=defaults.max_num_batched_tokens)
    for field in ("num_requests", "prefix_tokens", "suffix_tokens", "output_tokens"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field),
                            help="shared-prefix")  # fmt: skip
    for field in ("conversations", "turns", "message_tokens", "answer_tokens"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field),
                            help="multi-turn")  # fmt: skip
    parser.add_argument("--random-requests", type=int, default=defaults.random_requests, help="random")
    return parser


def settings_from_args(args: argparse.Namespace) -> PrefixBenchSettings:
    fields = set(PrefixBenchSettings.__dataclass_fields__) - {"torch_threads"}
    given = {field: value for field, value in vars(args).items() if field in fields}
    return PrefixBenchSettings(**given, torch_threads=args.threads)


def run(args: argparse.Namespace) -> dict[str, object]:
    return run_prefix_bench(settings_from_args(args))
