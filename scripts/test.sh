#!/usr/bin/env bash
# The test suite. Expects scripts/setup.sh to have run. pytest exits 5 when it collects no test:
# that is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/checkov/bin:$PATH"
.venv/bin/python -m ruff check infra inference tests || exit 1
bash scripts/lint.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
