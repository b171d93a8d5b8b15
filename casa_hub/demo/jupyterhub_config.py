# JupyterHub configuration of the embedded demo facility (`casa-hub demo`): the path admins use.
#
# 1. the drop-ins of jupyterhub_config.d/, in sorted order, run the way Zero to JupyterHub runs them
#    (in this file's namespace, so each sees what the previous ones set), reading the site file
#    $CASA_SITE_CONFIG (<state>/site.json, written by casa_hub.demo.facility);
# 2. loopback.py: ports, database and secrets in the state directory, notebooks as local processes,
#    and the local Dask Gateway -- what only a one-machine hub needs;
# 3. extra config files named in <state>/settings.json (site experiments, tests), run last.
import json
import os
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub


def _run(path: str) -> None:
    exec(compile(Path(path).read_text(), path, "exec"), globals())  # noqa: S102 - config files, as z2jh does


_settings = json.loads((Path(os.environ["CASA_DEMO_STATE"]) / "settings.json").read_text())
for _dropin in sorted(Path(_settings["dropins_dir"]).glob("*.py")):
    _run(str(_dropin))
_run(str(Path(__file__).resolve().parent / "loopback.py"))
for _extra in _settings.get("extra_hub_config", []):
    _run(_extra)
