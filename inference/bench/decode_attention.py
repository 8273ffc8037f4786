"""`python -m inference bench --decode-attention`: one layer's decode attention, each way the engine
can run it here, over the same block pool.

A batch of decodes attends over its contexts, with the attention shape of a `--shape` model, by:
- `paged`: the device's paged kernel, reading keys and values where they lie in the pool (the C++
  kernel on the CPU, Triton's on a GPU);
- `gathered`: torch's SDPA over each context's blocks gathered into one tensor (the reference, and
  the fallback where no paged kernel is available).

Where a context's blocks lie in the pool decides how well the memory system streams them, so each
runs over three layouts of the same contexts:
- `contiguous`: each context's blocks one after the other (prompts prefilled alone);
- `interleaved`: a context's next block a batch of blocks further on (decodes that each took a new
  block in the same step);
- `scattered`: the blocks in a random order (the free list of a server that has run a while).

Before each call the device's caches are flushed, as the layer's matmuls flush them in a real step.
The report gives each way's median time per call, the KV bytes a call reads and their rate against
the copy bandwidth measured in the same run, and how far the paged kernel's output lies from SDPA's.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, get_args

import torch

from inference.bench.shapes import SHAPES
from inference.bench.step_profile import PhaseClock, copy_bytes_per_second
from inference.config import KvCacheDtype, default_torch_threads
from inference.engine.attention import (
    DecodeKernel,
    LayerCache,
    StepLayout,
    Workspace,
    decode_attention,
    decode_masks,
)
from inference.engine.model_runner import KV_CACHE_DTYPES, pick_decode_kernel
from inference.model_loading import DTYPES, pick_device

LAYOUTS = ("contiguous", "interleaved", "scattered")


def block_tables(layout: str, batch_size: int, blocks_per_context: int, seed: int = 0) -> torch.Tensor:
    """`[batch_size, blocks_per_context]` distinct blocks of a pool of exactly that many, in `layout`."""
    count = batch_size * blocks_per_context
    if layout == "contiguous":
        return torch.arange(count).view(batch_size, blocks_per_context)
    if layout == "interleaved":
        return torch.arange(count).view(blocks_per_context, batch_size).t().contiguous()
    if layout == "scattered":
        return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).view(batch_size, -1)
    raise ValueError(f"unknown block layout {layout!r}; one of {', '.join(LAYOUTS)}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or default_torch_threads())
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    cache_dtype = KV_CACHE_DTYPES.get(args.kv_cache_dtype, dtype)
    shape = SHAPES[args.shape]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = shape["hidden_size"] // heads
    blocks_per_context = -(-args.context_tokens // args.block_size)
    slots = args.batch_size * blocks_per_context * args.block_size
    generator = torch.Generator().manual_seed(0)

    def random(*size: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device, dtype)

    keys, values = (random(kv_heads, slots, head_dim, dtype=cache_dtype) for _ in range(2))
    cache = LayerCache(keys, values, args.block_size)
    query = random(heads, args.batch_size, head_dim)
    ends = torch.full((args.batch_size,), args.context_tokens, device=device)
    paged = pick_decode_kernel("auto", device, args.block_size)
    kernels: dict[str, DecodeKernel | None] = {"gathered": None}  # None: SDPA over gathered blocks
    if paged is not None:
        kernels = {"paged": paged, **kernels}
    workspace = Workspace(device)

    # The masks and the empty prefill rows and written slots are the same for every layout.
    masks = decode_masks(ends, blocks_per_context, args.block_size, {None}, dtype)
    nothing = torch.empty(0, dtype=torch.long, device=device)
    layouts = {}
    for name in LAYOUTS:
        tables = block_tables(name, args.batch_size, blocks_per_context).to(device)
        layouts[name] = StepLayout(nothing, [], nothing, tables, ends, masks)
    # Written before every call: larger than the device's last-level cache.
    flush = torch.empty((512 if device.type == "cuda" else 64) << 20, dtype=torch.uint8, device=device)
    clock = PhaseClock(device)
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(args.calls + 1):  # the first round warms up, untimed
            for layout in LAYOUTS:
                for way, kernel in kernels.items():
                    flush.add_(1)
                    with clock.phase((layout, way)):
                        outputs[layout, way] = decode_attention(
                            query, cache, layouts[layout], head_dim**-0.5, None, workspace, kernel
                        )
    bandwidth = copy_bytes_per_second(device)
    kv_bytes = 2 * args.batch_size * args.context_tokens * kv_heads * head_dim * cache_dtype.itemsize
    report: dict[str, Any] = {}
    for layout in LAYOUTS:
        medians = {way: statistics.median(clock.times[layout, way][1:]) for way in kernels}
        report[layout] = {
            way: {
                "median_ms": 1000 * median,
                "kv_bytes_read_per_s": kv_bytes / median,
                "share_of_copy_bandwidth": kv_bytes / median / bandwidth,
            }
            for way, median in medians.items()
        }
        if paged is not None:
            report[layout]["paged_speedup"] = medians["gathered"] / medians["paged"]
            difference = outputs[layout, "paged"].float() - outputs[layout, "gathered"].float()
            report[layout]["max_abs_difference"] = difference.abs().max().item()
    return {
        "device": device.type,
        # What the CPU kernel was built for (ATEN_CPU_CAPABILITY picks a narrower one).
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else None,
        "dtype": args.dtype,
        "kv_cache_dtype": str(cache_dtype).removeprefix("torch."),
        "shape": args.shape,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "batch_size": args.batch_size,
        "context_tokens": args.context_tokens,
        "block_size": args.block_size,
        "torch_threads": torch.get_num_threads(),
        "calls": args.calls,
        "paged_kernel": None if paged is None else f"{paged.__module__}.{paged.__name__}",
        "kv_bytes_read_per_call": kv_bytes,
        "copy_bytes_per_s": bandwidth,
        "layouts": report,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference bench --decode-attention", description=__doc__)
    parser.add_argument("--decode-attention", action="store_true", required=True)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="llama-50m", help="whose attention shape")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="bfloat16",
        help="of the queries (and the cache, by default)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        choices=get_args(KvCacheDtype),
        default="auto",
        help="as `serve`'s (auto: --dtype)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--context-tokens", type=int, default=192, help="of every decode, its new token included"
    )
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per way and layout")
    parser.add_argument("--threads", type=int, help="torch threads (default: as `serve`)")
    return parser
