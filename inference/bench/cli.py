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
    from inference.bench import serving

    args = serving.build_parser().parse_args(arguments)
    print(json.dumps(serving.run_bench(serving.settings_from_args(args)), indent=2))
    return 0
