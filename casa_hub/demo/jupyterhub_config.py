# JupyterHub configuration of the embedded demo facility (`casa-hub demo`): the path admins use.
#
# 1. the drop-ins of jupyterhub_config.d/, in sorted order as Zero to JupyterHub loads them, reading the
#    site file $CASA_SITE_CONFIG (<state>/site.json, written by casa_hub.demo.facility);
# 2. loopback.py: ports, database and secrets in the state directory, notebooks as local processes,
#    and the local Dask Gateway -- what only a one-machine hub needs;
# 3. extra config files named in <state>/settings.json (site experiments, tests), loaded last.
import json
import os
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub

settings = json.loads((Path(os.environ["CASA_DEMO_STATE"]) / "settings.json").read_text())
for dropin in sorted(Path(settings["dropins_dir"]).glob("*.py")):
    load_subconfig(str(dropin))  # noqa: F821 - provided by JupyterHub
load_subconfig(str(Path(__file__).resolve().parent / "loopback.py"))  # noqa: F821
for extra in settings.get("extra_hub_config", []):
    load_subconfig(extra)  # noqa: F821
