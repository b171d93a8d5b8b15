#!/usr/bin/env bash
# Install everything (apt, pip, npm), then run the whole test suite against real services: every
# layer under JupyterHub 6 (.venv), then the hub and end-to-end layers again under the newest
# JupyterHub 5 (.venv-jh5; CASA_SKIP_JUPYTERHUB5=1 leaves that out). Before the tests, each image's pinned
# requirements are installed on Python 3.13 (.venv-py313-*; tests/deploy/test_images_py313.py uses them;
# CASA_SKIP_PY313=1 leaves that out and those tests skip).
# Arguments are passed to pytest (e.g. -k browser); with arguments only the JupyterHub 6 run happens.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
printf '\n==> lint: ruff\n'
.venv/bin/ruff check casa_hub tests benchmarks
if [ $# -eq 0 ] && [ "${CASA_SKIP_PY313:-0}" != 1 ]; then
  printf '\n==> python 3.13: the images\x27 requirements\n'
  scripts/images-py313-venv.sh
  export CASA_REQUIRE_PY313=1
fi
printf '\n==> tests: pytest under JupyterHub 6 (per-test timeout 300 s)\n'
status=0
.venv/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra "$@" || status=$?
if [ $# -eq 0 ] && [ "${CASA_SKIP_JUPYTERHUB5:-0}" != 1 ]; then
  printf '\n==> tests: the hub and end-to-end layers under JupyterHub 5\n'
  scripts/jupyterhub5-venv.sh
  .venv-jh5/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra tests/hub tests/e2e || status=$?
fi
exit $status
