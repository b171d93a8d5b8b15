#!/usr/bin/env bash
# .venv-jh5: the test environment of .venv with the newest JupyterHub 5 (the major Zero to JupyterHub's
# charts and the images ship) in place of JupyterHub 6. Everything but the jupyterhub package comes from
# .venv (a .pth file), so the two environments differ in exactly that package.
set -euo pipefail
cd "$(dirname "$0")/.."
JH5=${CASA_JUPYTERHUB5:-5.5.4}
stamp=.venv-jh5/.casa-jupyterhub-$JH5
if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ]; then
  printf '==> python: .venv-jh5 (JupyterHub %s) is up to date\n' "$JH5"
  exit 0
fi
printf '==> python: creating .venv-jh5 with JupyterHub %s beside .venv\n' "$JH5"
rm -rf .venv-jh5
.venv/bin/python -m venv .venv-jh5
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$(.venv-jh5/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$PWD" "$site" > "$own/zz-casa-venv.pth"
.venv-jh5/bin/python -m pip install -q --no-deps "jupyterhub==$JH5" 2> >(grep -v "is ignored: it is neither" >&2)
# the commands of .venv that .venv-jh5 lacks (dask, mlflow, ...: the demo and the gateway run them
# from the Python's own bin directory); jupyterhub's own come from the package just installed
for cmd in .venv/bin/*; do
  name=$(basename "$cmd")
  [ -e ".venv-jh5/bin/$name" ] || ln -s "$PWD/$cmd" ".venv-jh5/bin/$name"
done
.venv-jh5/bin/python -c "import jupyterhub, casa_hub; assert jupyterhub.__version__ == '$JH5', jupyterhub.__version__"
touch "$stamp"
