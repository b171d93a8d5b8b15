#!/usr/bin/env bash
# Install everything (apt, pip, npm), then run the whole test suite against real services: every
# layer under JupyterHub 6 (.venv) and, at the same time, the hub and end-to-end layers again under the
# newest JupyterHub 5 (.venv-jh5; CASA_SKIP_JUPYTERHUB5=1 leaves that out; modules marked one_hub_version,
# whose subject is not the hub, run once). Before the tests, each image's pinned
# requirements are installed on Python 3.13 (.venv-py313-*; tests/deploy/test_images_py313.py uses them;
# CASA_SKIP_PY313=1 leaves that out and those tests skip).
# Tests run in parallel: CASA_TEST_WORKERS pytest-xdist workers (default 4; most of the suite waits on
# token lifetimes and servers, not on the CPU), grouped as tests/support/parallel.py says.
# Arguments are passed to pytest (e.g. -k browser, or -n 0 for one process); with arguments only the
# JupyterHub 6 run happens.
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
tests_started=$SECONDS
workers=${CASA_TEST_WORKERS:-4}
parallel=(-n "$workers" --dist loadgroup)
jh5_pid=""
if [ $# -eq 0 ] && [ "${CASA_SKIP_JUPYTERHUB5:-0}" != 1 ]; then
  # the JupyterHub 5 run goes alongside the JupyterHub 6 run (each with its own share of the ports): both
  # mostly wait; its output is printed when it ends
  scripts/jupyterhub5-venv.sh
  jh5_workers=${CASA_TEST_WORKERS_JUPYTERHUB5:-2}
  jh5_log=$(mktemp -t casa-jupyterhub5-tests.XXXXXX)
  printf '\n==> tests: the hub and end-to-end layers under JupyterHub 5, alongside (%s workers)\n' "$jh5_workers"
  CASA_TEST_PORT_SHARE=1/2 .venv-jh5/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra \
    -n "$jh5_workers" --dist loadgroup -m "not one_hub_version" tests/hub tests/e2e >"$jh5_log" 2>&1 &
  jh5_pid=$!
  trap 'kill "$jh5_pid" 2>/dev/null || true' EXIT  # an interrupted run leaves no pytest behind
  export CASA_TEST_PORT_SHARE=0/2
fi
printf '\n==> tests: pytest under JupyterHub 6 (%s workers, per-test timeout 300 s)\n' "$workers"
status=0
.venv/bin/python -m pytest -p no:cacheprovider --timeout=300 -ra "${parallel[@]}" "$@" || status=$?
if [ -n "$jh5_pid" ]; then
  wait "$jh5_pid" || status=$?
  printf '\n==> tests: the hub and end-to-end layers under JupyterHub 5 (ran alongside)\n'
  cat "$jh5_log"
  rm -f "$jh5_log"
fi
printf '\n==> tests: %s s in all (exit status %s)\n' "$((SECONDS - tests_started))" "$status"
exit $status
