#!/usr/bin/env bash
# Install everything (apt, pip, npm), then run the whole test suite against real services.
# Arguments are passed to pytest (e.g. -k browser).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
printf '\n==> lint: ruff\n'
.venv/bin/ruff check casa_hub tests benchmarks
printf '\n==> tests: pytest (per-test timeout 300 s)\n'
exec .venv/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra "$@"
