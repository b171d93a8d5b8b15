#!/usr/bin/env bash
# .venv-py313-{hub,notebook,worker}: each image's Python packages installed the way its Dockerfile installs
# them (images/<name>/requirements.txt together with casa_hub from a copy of the build context), on
# Python 3.13 (the images' Python) -- the closest check to building the images that runs here.
# The hub image's base already ships jupyterhub and oauthenticator (see images/hub/requirements.txt): the
# same versions are added to its venv; the notebook's base ships JupyterLab (casa_hub[notebook] brings it).
# A venv is made again when its requirements change; casa_hub itself is reinstalled on every run.
# CASA_PYTHON313=/path/to/python3.13 picks the interpreter (default: pyenv's newest 3.13, or python3.13).
set -euo pipefail
cd "$(dirname "$0")/.."

# pip's and the build's chatter goes to the venv's install.log, printed if the install fails
logged() {
  local log=$1
  shift
  if ! "$@" >>"$log" 2>&1; then
    grep -v 'is ignored: it is neither' "$log" | tail -40 >&2
    printf 'images-py313: error: %s failed (log: %s)\n' "$*" "$log" >&2
    exit 1
  fi
}

find_python() {
  if [ -n "${CASA_PYTHON313:-}" ]; then
    printf '%s\n' "$CASA_PYTHON313"
    return
  fi
  local root candidate=""
  root=${PYENV_ROOT:-$HOME/.pyenv}
  for p in "$root"/versions/3.13*/bin/python3.13; do
    [ -x "$p" ] && candidate=$p
  done
  if [ -z "$candidate" ] && command -v python3.13 >/dev/null 2>&1 && python3.13 -c '' 2>/dev/null; then
    candidate=$(command -v python3.13)
  fi
  printf '%s\n' "$candidate"
}

py=$(find_python)
if [ -z "$py" ] || ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
  printf 'images-py313: error: no Python 3.13 found (pyenv install 3.13, or set CASA_PYTHON313)\n' >&2
  exit 2
fi

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r setup.cfg pyproject.toml README.md casa_hub "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +

hub_base="jupyterhub==5.5.0 oauthenticator==17.4.0"  # what quay.io/jupyterhub/k8s-hub:4.4.0 ships
for image in hub notebook worker; do
  venv=.venv-py313-$image
  reqs=images/$image/requirements.txt
  target=$src
  [ "$image" = notebook ] && target="${src}[notebook]"
  extra=""
  [ "$image" = hub ] && extra=$hub_base
  key=$( { "$py" -V; cat "$reqs"; echo "$extra"; grep -A40 '^install_requires' setup.cfg; } | sha256sum | cut -c1-16)
  if [ ! -f "$venv/.casa-requirements-$key" ]; then
    printf '==> python 3.13: installing the %s image'"'"'s requirements into %s\n' "$image" "$venv"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    logged "$venv/install.log" "$venv/bin/python" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086  # $extra is a list of requirements
    logged "$venv/install.log" "$venv/bin/python" -m pip install -q -r "$reqs" "$target" $extra
    touch "$venv/.casa-requirements-$key"
  else
    printf '==> python 3.13: %s is up to date; reinstalling casa_hub\n' "$venv"
    logged "$venv/install.log" "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$src"
  fi
  "$venv/bin/python" -m pip check
done
