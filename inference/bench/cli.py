"""`python -m inference bench [...]`: picks the comparison from the flags and prints its JSON report.

- (default) the engine against the seed's window batching, and with `--peers` against transformers'
  own batching, on the same requests in one run (`serving`);
- `--quantization int8`: the unquantized model beside its int8 versions (`quantization`);
- `--workload shared-prefix|multi-turn|random`: prefix caching on against off (`prefix_cache`);
- `--lora N`: a workload spread over N LoRA adapters against the base model alone (`lora`);
- `--step-profile`: the host time of a decode step beside the model's (`step_profile`);
- `--decode-attention`: one layer's decode attention, the paged kernel against SDPA (`decode_attention`);
- `--tensor-parallel-size N`: the model whole against split over N ranks (`tensor_parallel`);
- `--structured-output`: the default workload with a JSON schema on against off (`structured`).
"""

from __future__ import annotations

import importlib
import json
import sys

# The flag that selects each comparison other than the default one, and the module that runs it.
_SELECTED_BY_FLAG = {
    "--lora": "lora",
    "--quantization": "quantization",
    "--step-profile": "step_profile",
    "--decode-attention": "decode_attention",
    "--tensor-parallel-size": "tensor_parallel",
    "--structured-output": "structured",
    "--workload": "prefix_cache",
}


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    flags = {argument.split("=")[0] for argument in arguments}
    name = next((module for flag, module in _SELECTED_BY_FLAG.items() if flag in flags), "serving")
    bench = importlib.import_module(f"inference.bench.{name}")
    report = bench.run(bench.build_parser().parse_args(arguments))
    print(json.dumps(report, indent=2))
    return 0
