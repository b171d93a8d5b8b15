#!/usr/bin/env bash
# Install everything, then run the embedded demo facility on 127.0.0.1 (Ctrl-C stops it).
# Arguments are passed to `casa-hub demo` (e.g. --port 8001).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh demo
printf '\n==> starting the demo facility\n'
exec .venv/bin/casa-hub demo "$@"
