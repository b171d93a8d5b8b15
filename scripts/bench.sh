#!/usr/bin/env bash
# Install what the benchmarks need (Python venv, node_modules), then run them all and write
# benchmarks/results.md. Arguments go to the runner (e.g. --only mint, --quick; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test  # the analysis benchmark runs the real XRootD servers
printf '\n==> benchmarks\n'
exec .venv/bin/python -m benchmarks.run "$@"
