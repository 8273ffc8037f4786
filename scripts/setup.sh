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
