#!/usr/bin/env bash
# Install everything (apt, pip, npm), then run the whole test suite against real services: every
# layer under JupyterHub 6 (.venv), then the hub and end-to-end layers again under the newest
# JupyterHub 5 (.venv-jh5; CASA_SKIP_JUPYTERHUB5=1 leaves that out).
# Arguments are passed to pytest (e.g. -k browser); with arguments only the JupyterHub 6 run happens.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
printf '\n==> lint: ruff\n'
.venv/bin/ruff check casa_hub tests benchmarks
printf '\n==> tests: pytest under JupyterHub 6 (per-test timeout 300 s)\n'
status=0
.venv/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra "$@" || status=$?
if [ $# -eq 0 ] && [ "${CASA_SKIP_JUPYTERHUB5:-0}" != 1 ]; then
  printf '\n==> tests: the hub and end-to-end layers under JupyterHub 5\n'
  scripts/jupyterhub5-venv.sh
  .venv-jh5/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra tests/hub tests/e2e || status=$?
fi
exit $status
