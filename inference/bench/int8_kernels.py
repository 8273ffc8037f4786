"""Which int8 linear is fastest on this machine: the measurement behind what `int8` picks per device.

Times one linear layer of a given shape for each candidate at several token counts (decode is a
few tokens, prefill many) and prints JSON: median microseconds per call, and the fastest candidate
per token count. `python -m inference.bench.int8_kernels --help`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.packed_linear import PackedLinear, packing_applies
from inference.quantize.int8_linear import from_linear, quantize_per_channel

Candidate = Callable[[torch.Tensor], torch.Tensor]


def candidates(linear: nn.Linear) -> dict[str, Candidate]:
    """Every int8 path torch and torchao offer on the layer's device, beside float32 and bfloat16."""
    weight_bf16 = linear.weight.detach().bfloat16()
    found: dict[str, Candidate] = {
        "float32": lambda x: F.linear(x, linear.weight),
        "bfloat16": lambda x: F.linear(x.bfloat16(), weight_bf16),
        "int8-weight-only": from_linear("int8-weight-only", linear),
    }
    if packing_applies(linear.weight.device, torch.bfloat16):  # the engine's bfloat16 layers there
        packed = PackedLinear(copy.deepcopy(linear).bfloat16())
        found["bfloat16 (packed for oneDNN)"] = lambda x: packed(x.bfloat16())
    if linear.weight.device.type == "cpu":  # kernels with a CPU implementation only
        int8_weight, scale = quantize_per_channel(linear.weight)
        scale_bf16 = scale.bfloat16()
        found["int8-dynamic (fbgemm)"] = from_linear("int8-dynamic", linear)
        found["aten._weight_int8pack_mm (bf16 activations)"] = lambda x: torch.ops.aten._weight_int8pack_mm(
            x.bfloat16(), int8_weight, scale_bf16
        )
    found.update(_torchao_candidates(linear))
    return found


def _torchao_candidates(linear: nn.Linear) -> dict[str, Candidate]:
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        return {}
    found: dict[str, Candidate] = {}
    for name, config in (
        ("torchao Int8WeightOnlyConfig", Int8WeightOnlyConfig()),
        ("torchao Int8DynamicActivationInt8WeightConfig", Int8DynamicActivationInt8WeightConfig()),
    ):
        module = nn.Sequential(copy.deepcopy(linear))
        quantize_(module, config)
        found[name] = module
    return found


def median_microseconds(candidate: Candidate, x: torch.Tensor, repeats: int) -> float:
    def synchronize() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with torch.inference_mode():
        for _ in range(3):
            candidate(x)
        times = []
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            candidate(x)
            synchronize()
            times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def measure(
    in_features: int, out_features: int, token_counts: list[int], repeats: int, device: torch.device
) -> dict[str, object]:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False, device=device).eval()
    timed = candidates(linear)
    per_tokens: dict[str, dict[str, float]] = {}
    for tokens in token_counts:
        x = torch.randn(tokens, in_features, device=device)
        per_tokens[str(tokens)] = {name: median_microseconds(fn, x, repeats) for name, fn in timed.items()}
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "shape": [out_features, in_features],
        "median_us_per_call": per_tokens,
        "fastest": {tokens: min(times, key=times.__getitem__) for tokens, times in per_tokens.items()},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.bench.int8_kernels", description=__doc__)
    parser.add_argument("--in-features", type=int, default=1024)
    parser.add_argument("--out-features", type=int, default=2816)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = measure(args.in_features, args.out_features, args.tokens, args.repeats, device)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
