"""`python -m inference bench --structured-output`: the default workload with a JSON schema on and off.

The same requests (the default bench workload: random prompts and output lengths, all at once,
greedy) run through the engine twice per repeat, plain and constrained by a JSON schema, in one
process on one model; runs alternate (off, on, on, off, ...) so that neither always goes first on
a busy machine. Each request's schema is one string field with a minimum length near its token
budget, so that constrained outputs run about as long as plain ones (the grammar closes the string as
the budget runs out) and output tokens/s compares like with like. The report also gives the mean
compile time of a new schema (every request compiles its own) and of one from the cache.

With a minimum length near the budget, the shortest way to the end fills the budget from the first
token, so every token is the grammar's and none the model's: `--min-length-share 0.5` asks for half
the budget instead, and the model writes the rest of the string, its tokens checked (and masked where
the grammar rejects them) as a model's output is.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.bench.serving import drive_engine, positive_int
from inference.bench.workload import make_workload, summarize
from inference.config import ServerConfig, default_torch_threads
from inference.engine.async_engine import AsyncEngine
from inference.engine.grammar import GrammarSpec
from inference.model_loading import LoadedModel, load_model

# Tokens of the schema's own text around the answer (`{"answer":"` and `"}` on a byte-level tokenizer).
_SCHEMA_OVERHEAD_TOKENS = 16


def schema_for(max_tokens: int, min_length_share: float = 1.0) -> dict[str, object]:
    """One string field long enough that the output runs to about `max_tokens`, as the plain one does:
    otherwise a schema run would count fewer tokens in as many steps and look slower for it alone.
    With a `min_length_share` below 1 the string must fill only that share of the budget."""
    min_length = round(min_length_share * max_tokens) - _SCHEMA_OVERHEAD_TOKENS
    answer = {"type": "string", "minLength": max(0, min_length)}
    return {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
            "additionalProperties": False}  # fmt: skip


@dataclass(frozen=True)
class StructuredBenchSettings:
    model_path: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    num_requests: int = 128
    prompt_tokens: tuple[int, int] = (16, 256)
    output_tokens: tuple[int, int] = (16, 128)
    max_num_seqs: int = 64
    repeats: int = 1
    seed: int = 0
    torch_threads: int | None = None
    min_length_share: float = 1.0


def run_once(loaded: LoadedModel, settings: StructuredBenchSettings, constrained: bool) -> dict[str, object]:
    workload = make_workload(
        settings.num_requests, settings.prompt_tokens, settings.output_tokens, loaded.vocab_size, None,
        settings.seed,
    )  # fmt: skip
    config = ServerConfig(max_num_seqs=settings.max_num_seqs, max_queue_len=len(workload))

    async def main() -> tuple[list, float, float]:
        async with AsyncEngine(loaded, config) as engine:
            schemas = [schema_for(item.max_tokens, settings.min_length_share) for item in workload]
            specs = [GrammarSpec.json_schema(schema) for schema in schemas]
            # Each request compiles its schema (most are new to the cache), as a server would.
            started = time.perf_counter()
            grammars = [engine.compile_grammar(spec) for spec in specs] if constrained else None
            cold = (time.perf_counter() - started) / len(specs) if constrained else 0.0
            started = time.perf_counter()
            engine.compile_grammar(specs[0])
            cached = time.perf_counter() - started
            timings = await drive_engine(engine, workload, grammars)
            return timings, cold, cached

    cpu_started = time.process_time()
    timings, cold, cached = asyncio.run(main())
    summary = summarize(timings)
    return {
        **summary,
        "cpu_time_s": time.process_time() - cpu_started,
        "grammar_compile_s": cold,
        "grammar_compile_cached_s": cached,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    settings = StructuredBenchSettings(
        model_path=args.model_path, device=args.device, dtype=args.dtype, num_requests=args.num_requests,
        max_num_seqs=args.max_num_seqs, repeats=args.repeats, seed=args.seed, torch_threads=args.threads,
        min_length_share=args.min_length_share,
    )  # fmt: skip
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    loaded = load_model(
        ServerConfig(model_path=settings.model_path, device=settings.device, dtype=settings.dtype)
    )
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for repeat in range(settings.repeats):
        for constrained in (False, True) if repeat % 2 == 0 else (True, False):
            runs[constrained].append(run_once(loaded, settings, constrained))

    def median(constrained: bool, key: str) -> float:
        return statistics.median(float(run[key]) for run in runs[constrained])  # type: ignore[arg-type]

    off, on = median(False, "output_tokens_per_s"), median(True, "output_tokens_per_s")
    return {
        "model": loaded.name,
        "device": loaded.device.type,
        "torch_threads": torch.get_num_threads(),
        "workload": {"num_requests": settings.num_requests, "prompt_tokens": settings.prompt_tokens,
                     "output_tokens": settings.output_tokens, "seed": settings.seed,
                     "schema": schema_for(settings.output_tokens[1], settings.min_length_share)},
        "repeats": settings.repeats,
        "output_tokens_per_s": {"schema_off": off, "schema_on": on},
        "output_tokens": {"schema_off": median(False, "output_tokens"),
                          "schema_on": median(True, "output_tokens")},
        "schema_on_over_off": {"output_tokens_per_s": on / off},
        "grammar_compile_s": {"cold": median(True, "grammar_compile_s"),
                              "cached": median(True, "grammar_compile_cached_s")},
        "runs": {"schema_off": runs[False], "schema_on": runs[True]},
    }  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference bench --structured-output", description=__doc__
    )
    defaults = StructuredBenchSettings()
    parser.add_argument("--structured-output", action="store_true", required=True)
    parser.add_argument("--model-path", type=Path, default=None, help="default: the demo model")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=defaults.dtype)
    parser.add_argument("--num-requests", type=int, default=defaults.num_requests)
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="runs of each setting")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as `serve`)")
    parser.add_argument(
        "--min-length-share", type=float, default=defaults.min_length_share,
        help="share of each request's budget the schema's string must fill (1: all, every token forced)",
    )  # fmt: skip
    return parser
