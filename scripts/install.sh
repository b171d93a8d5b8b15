#!/usr/bin/env bash
# Install what casa_hub needs into this checkout, from nothing, on Debian/Ubuntu:
#   scripts/install.sh demo   -> Python venv (.venv) with casa_hub[demo], node_modules
#   scripts/install.sh test   -> the same plus the test tools and apt packages (chromium, ...)
# Safe to run again: finished steps are skipped quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-demo}
case "$mode" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac

step() { printf '\n==> %s\n' "$*"; }
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

apt_packages=()
python3 -m venv --help >/dev/null 2>&1 || apt_packages+=(python3-venv)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
# the data cache: a real XRootD origin + XCache with SciTokens authorization (casa_hub/demo/data_cache.py,
# tests/support/xrootd_fixture.py), in a network namespace (iproute2), with the demo's own CA (openssl)
[ -x /usr/bin/xrootd ] || apt_packages+=(xrootd-server)
compgen -G '/usr/lib/*/libXrdAccSciTokens-5.so' >/dev/null || apt_packages+=(xrootd-scitokens-plugins)
command -v ip >/dev/null 2>&1 || apt_packages+=(iproute2)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
[ -f /etc/ssl/certs/ca-certificates.crt ] || apt_packages+=(ca-certificates)
if [ "$mode" = test ]; then
  [ -x /usr/bin/chromium ] || apt_packages+=(chromium)
  [ -x /usr/bin/xrdcp ] || apt_packages+=(xrootd-client)
  command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
  # real Slurm for the Dask batch tests (tests/slurm_fixture.py); sudo for dask-gateway's SlurmBackend
  [ -x /usr/sbin/slurmctld ] || apt_packages+=(slurmctld)
  [ -x /usr/sbin/slurmd ] || apt_packages+=(slurmd)
  [ -x /usr/bin/sbatch ] || apt_packages+=(slurm-client)
  [ -x /usr/sbin/munged ] || apt_packages+=(munge)
  [ -x /usr/bin/sudo ] || apt_packages+=(sudo)
  /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)  # .venv-jobs
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  step "apt: installing ${apt_packages[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

# xrootd refuses to run as root: the data cache's servers run as this system user (no home, no shell)
if ! getent passwd casa-xrootd >/dev/null; then
  step "system user casa-xrootd (the XRootD servers of the data cache run as it)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin casa-xrootd
fi

if [ ! -x .venv/bin/python ]; then
  step "python: creating .venv"
  python3 -m venv .venv
fi
# the demo: the hub, Dask Gateway, the MLflow server and the physicists' analysis stack
extra="demo,analysis,mlflow"; [ "$mode" = test ] && extra="test"
stamp=.venv/.casa-installed-$extra
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  step "python: installing casa_hub[$extra] into .venv (first run takes a few minutes)"
  quiet_pip .venv/bin/python -m pip install -q --upgrade pip
  quiet_pip .venv/bin/python -m pip install -q -e ".[$extra]"
  touch "$stamp"
else
  step "python: .venv is up to date"
fi

# Python for Dask batch jobs that run as another Unix user (tests/test_dask_slurm.py): the system's
# python3, readable by every user, with the same dask versions as .venv
if [ "$mode" = test ] && { [ ! -f .venv-jobs/.casa-installed ] || [ setup.cfg -nt .venv-jobs/.casa-installed ]; }; then
  step "python: installing the Dask job environment .venv-jobs"
  [ -x .venv-jobs/bin/python ] || /usr/bin/python3 -m venv .venv-jobs
  .venv/bin/python -m pip freeze --exclude-editable > .venv-jobs/constraints.txt
  quiet_pip .venv-jobs/bin/python -m pip install -q -c .venv-jobs/constraints.txt \
    "dask-gateway-server[jobqueue]" dask-gateway pyjwt
  chmod -R a+rX .venv-jobs
  touch .venv-jobs/.casa-installed
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "node: installing node_modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
else
  step "node: node_modules is up to date"
fi
