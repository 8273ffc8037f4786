#!/usr/bin/env bash
# The GPU check in one short run (at most about 8 minutes on one GPU, every step bounded by a
# timeout): the GPU tests, then the GPU benchmarks, each writing its JSON (or JUnit XML) into OUTDIR.
#   scripts/gpu-check.sh OUTDIR
# Without a CUDA device it says so and exits at once (status 2).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu-check.sh OUTDIR}"
python="${PYTHON:-.venv/bin/python}"

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: no CUDA device is visible to torch here; nothing was run" >&2
  exit 2
fi
mkdir -p "$out"
"$python" -c 'import json, torch; p = torch.cuda.get_device_properties(0); print(json.dumps({"device": p.name, "memory_bytes": p.total_memory, "torch": torch.__version__}))' > "$out/device.json"

# 1. GPU tests: the Triton kernel compiled for the device, the engine with the kernel and with CUDA
#    graphs against `generate`, and the exactness suite on the GPU. The CPU's C++ kernel is left to
#    the CPU suite (it would need a C++ compiler and ninja on the GPU machine).
timeout 150 "$python" -m pytest -q tests/inference/test_paged_decode.py tests/inference/test_cuda_graphs.py \
  tests/inference/test_exactness.py -k "not compiled and not cpu_kernel" --junitxml "$out/tests.xml" \
  || echo "gpu-check: tests failed (see $out/tests.xml)" >&2

# 2. Benchmarks on a Llama-shaped 1.2B model (hidden 2048, 16 layers, 32 heads, 8 KV heads, vocab
#    128256) in bfloat16, written once.
model="$(mktemp -d)/llama-1b"
"$python" -c "import sys; from pathlib import Path; from inference.bench.shapes import make_random_llama; make_random_llama(Path(sys.argv[1]), 'llama-1b')" "$model" > /dev/null
bench() { local name="$1" limit="$2"; shift 2
  timeout "$limit" "$python" -m inference bench --model-path "$model" --dtype bfloat16 "$@" > "$out/$name.json" \
    || echo "gpu-check: bench $name failed or ran out of time" >&2; }
# Host time and device time per decode step, bytes read per step against the copy bandwidth.
bench step-profile 50 --step-profile --batch-sizes 1 16 64 128 --prompt-tokens 256 --steps 10
# The same decode steps reading an fp8 KV cache (half the KV bytes of bfloat16).
bench step-profile-fp8-kv 40 --step-profile --batch-sizes 64 128 --prompt-tokens 256 --steps 10 --kv-cache-dtype fp8
# The engine against transformers' static batches of 64 and its continuous batching, same requests.
bench peers 190 --peers --num-requests 128 --prompt-tokens 128:512 --output-tokens 256:256 \
  --max-num-seqs 128 --static-batch-size 64 --modes burst
# int8 weight-only decode against bfloat16 at batch 1.
bench int8 60 --quantization int8-weight-only --batch-sizes 1 16 --prompt-tokens 128 --new-tokens 64 --repeats 2
rm -rf "$(dirname "$model")"
echo "gpu-check: results in $out"
