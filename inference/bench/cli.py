"""`python -m inference bench [...]`: picks the comparison from the flags and prints its JSON report."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(argument.split("=")[0] == "--quantization" for argument in arguments):
        # The int8 comparison (unquantized vs quantized, same process) has its own workload and flags.
        from inference.bench import quantization

        return quantization.main(arguments)
    if any(argument.split("=")[0] == "--workload" for argument in arguments):
        # Prefix caching on against off, on workloads that share prefixes (or, for its cost, do not).
        from inference.bench import prefix_cache

        args = prefix_cache.build_parser().parse_args(arguments)
        print(json.dumps(prefix_cache.run_prefix_bench(prefix_cache.settings_from_args(args)), indent=2))
        return 0
    from inference.bench import serving

    args = serving.build_parser().parse_args(arguments)
    print(json.dumps(serving.run_bench(serving.settings_from_args(args)), indent=2))
    return 0
