"""`python -m inference bench --step-profile`: where a decode step's time goes, at several batch sizes.

For each batch size the engine core is filled with that many sequences, their prompts prefilled,
and then a number of decode-only steps are timed phase by phase: scheduling, building the step's
tensors (`prepare`), the model's forward pass, sampling, committing the tokens, recording the
metrics that the serving loop records each step (`metrics`: load gauges, latency histograms and
counters, in a registry of the profile's own), and handing the step's tokens over as the engine
process does (`deliver`: the message it pickles for the API process, less the pipe's write). Everything
except the forward pass is host work that a faster model does not shrink; the report gives it per
step beside the forward time. On a GPU the device is synchronised around the forward pass so that
its kernels are not billed to the phase after it.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Hashable, Iterator
from typing import Any, get_args

import torch

from inference.bench.shapes import add_model_arguments, loaded_model
from inference.config import KvCacheDtype, ServerConfig, default_torch_threads
from inference.engine.core import EngineCore
from inference.engine.process import to_wire
from inference.engine.request import GenerationRequest, SamplingParams
from inference.engine.sampler import sample
from inference.engine.sequence import Sequence
from inference.engine.telemetry import EngineTelemetry
from inference.quantize.memory import model_weight_bytes

PHASES = ("schedule", "prepare", "forward", "sample", "commit", "metrics", "deliver")
HOST_PHASES = ("schedule", "prepare", "sample", "commit", "metrics", "deliver")
_COPY_REPEATS = 5


class PhaseClock:
    """Wall time per phase (any hashable name); on a GPU the device is synchronised at both ends of
    each phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: defaultdict[Hashable, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def phase(self, name: Hashable) -> Iterator[None]:
        self._synchronize()
        start = time.perf_counter()
        yield
        self._synchronize()
        self.times[name].append(time.perf_counter() - start)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def copy_bytes_per_second(device: torch.device) -> float:
    """Memory traffic (bytes read plus written) per second of a device-to-device copy larger than the
    device's caches."""
    megabytes = 256 if device.type == "cuda" else 64
    source = torch.empty(megabytes << 20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    clock = PhaseClock(device)
    for _ in range(_COPY_REPEATS):
        with clock.phase("copy"):
            target.copy_(source)
    return 2 * source.numel() / statistics.median(clock.times["copy"])


def _weight_bytes_read_per_step(model: torch.nn.Module) -> int:
    """Every weight, less the input embeddings (a step reads only its tokens' rows) unless the LM
    head shares them."""
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)  # a packed head has none: it holds a copy of its own
    tied = head_weight is not None and head_weight.data_ptr() == embeddings.data_ptr()
    return model_weight_bytes(model) - (0 if tied else embeddings.nbytes)


def profile_batch(
    core: EngineCore, telemetry: EngineTelemetry, batch_size: int, prompt_tokens: int, steps: int
) -> dict[str, Any]:
    rng = random.Random(batch_size)
    sampling = SamplingParams(max_tokens=steps + 2, temperature=0.0, ignore_eos=True)
    for index in range(batch_size):
        prompt = [rng.randrange(core.vocab_size) for _ in range(prompt_tokens)]
        request = GenerationRequest(f"profile-{batch_size}-{index}", prompt, sampling)
        core.add(Sequence.from_request(request, 0.0, core.device))
    while any(seq.num_computed_tokens < seq.num_prompt_tokens for seq in core.sequences.values()):
        core.step()  # prefill (and the first decode of whoever finished prefilling early)
    clock = PhaseClock(core.device)
    for _ in range(steps):
        with clock.phase("schedule"):
            chunks = core.schedule()
        with clock.phase("prepare"):
            inputs = core.runner.prepare(chunks)
        with clock.phase("forward"):
            logits = core.runner.forward(inputs)
        with clock.phase("sample"):
            sampled = sample(logits, [chunk.seq for chunk in chunks if chunk.samples], core.eos_token_ids)
        with clock.phase("commit"):
            outputs, _ = core.commit(chunks, sampled)
        with clock.phase("metrics"):
            stats = core.stats()
            telemetry.load(stats.running, stats.waiting, stats.kv_cache_usage)
            telemetry.tokens([output.seq for output in outputs], time.monotonic())
        with clock.phase("deliver"):
            deliveries = [(output.seq.request_id, output.event) for output in outputs]
            pickle.dumps(("items", to_wire(deliveries), stats))
    for request_id in list(core.sequences):
        core.abort(request_id)
    medians_ms = {phase: 1000 * statistics.median(clock.times[phase]) for phase in PHASES}
    mid_run_context = prompt_tokens + steps // 2 + 1
    kv_bytes = batch_size * mid_run_context * core.runner.kv_bytes_per_token
    return {
        "batch_size": batch_size,
        "decode_steps": steps,
        "median_ms": medians_ms,
        "host_ms_per_step": sum(medians_ms[phase] for phase in HOST_PHASES),
        "host_share_of_step": sum(medians_ms[phase] for phase in HOST_PHASES) / sum(medians_ms.values()),
        "kv_bytes_read_per_step": kv_bytes,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or default_torch_threads())
    with loaded_model(args.model_path, args.shape, args.device, args.dtype) as loaded:
        largest = max(args.batch_sizes)
        config = ServerConfig(
            max_num_seqs=largest,
            max_num_batched_tokens=max(2048, largest * args.prompt_tokens),
            max_model_len=max(16, args.prompt_tokens + args.steps + 8),
            kv_cache_memory_bytes=1 << 40,  # bounded by max_num_seqs sequences of max_model_len anyway
            kv_cache_dtype=args.kv_cache_dtype,
        )
        core = EngineCore(loaded, config)
        core.warm_up()
        weight_bytes = _weight_bytes_read_per_step(loaded.model)
        bandwidth = copy_bytes_per_second(loaded.device)
        # The token metrics the serving loop records per step, into a registry of their own.
        telemetry = EngineTelemetry(None, loaded.device, loaded.name)
        batches = [
            profile_batch(core, telemetry, size, args.prompt_tokens, args.steps) for size in args.batch_sizes
        ]
        for batch in batches:
            bytes_read = weight_bytes + batch["kv_bytes_read_per_step"]
            bound_ms = 1000 * bytes_read / bandwidth
            batch["bytes_read_per_step"] = bytes_read
            batch["bandwidth_bound_ms"] = bound_ms
            batch["forward_over_bandwidth_bound"] = batch["median_ms"]["forward"] / bound_ms
        return {
            "model": loaded.name,
            "device": loaded.device.type,
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "kv_cache_dtype": str(core.runner.cache_dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "prompt_tokens": args.prompt_tokens,
            "weight_bytes": weight_bytes,
            "copy_bytes_per_s": bandwidth,
            "decode_graphs": core.runner.graphs is not None,
            "batches": batches,
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference bench --step-profile", description=__doc__)
    parser.add_argument("--step-profile", action="store_true", required=True)
    add_model_arguments(parser, default_shape="llama-50m")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="decode steps timed per batch size")
    parser.add_argument("--threads", type=int, help="torch threads (default: as `serve`)")
    parser.add_argument("--kv-cache-dtype", choices=get_args(KvCacheDtype), default="auto")
    return parser
