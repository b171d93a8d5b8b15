# The demo's loopback overlay, loaded after the drop-ins: what a hub on one machine needs beyond the
# site file -- its ports on 127.0.0.1, its database, secrets and homes in the state directory,
# notebooks as local processes of this Python, and (with the demo's Dask switch) Dask Gateway as a
# hub service. Nothing here is a facility setting; those are all in the site file.
import json
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub

state = Path(os.environ["CASA_DEMO_STATE"])
settings = json.loads((state / "settings.json").read_text())
hub_url = f"http://127.0.0.1:{settings['hub_port']}"

# --- hub, proxy, database
c.JupyterHub.bind_url = hub_url
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings['hub_api_port']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
c.ConfigurableHTTPProxy.command = [str(Path(settings["node_modules"]) / ".bin" / "configurable-http-proxy")]
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "secrets" / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.logo_file = str(Path(__file__).resolve().parent / "logo.svg")

# --- notebooks: local processes of this Python, homes in the state directory
c.CasaLocalProcessSpawner.home_dir_template = str(state / "homes" / "{username}")
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
# JupyterLab: open a notebook with the facility's one kernel (no "Select Kernel" question), no news pop-up
c.Spawner.args.append(f"--LabApp.app_settings_dir={Path(__file__).resolve().parent / 'lab-settings'}")
c.Spawner.http_timeout = 90
c.Spawner.start_timeout = 120

# --- the physicists' first day: the sample data set by name, and the example analysis in every home
data = state / "data"
c.Spawner.environment.update({"CASA_FILESET": str(data / "fileset.json"), "CASA_DATA_DIR": str(data)})
EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "ttbar_analysis.ipynb"


def _place_example(spawner):  # a copy the user may change; never overwritten
    import shutil

    home = Path(spawner.home_dir)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if EXAMPLE.exists() and not (home / EXAMPLE.name).exists():
        shutil.copyfile(EXAMPLE, home / EXAMPLE.name)


c.Spawner.pre_spawn_hook = _place_example

# --- a Dask cluster per user: Dask Gateway (local backend) as a managed JupyterHub service, when
# installed (the `dask` extra) and the demo runs with Dask (`casa-hub demo` does, unless --no-dask)
if settings.get("dask"):
    from casa_hub.integrations.dask.gateway_service import add_embedded_gateway, gateway_available

    if gateway_available():
        # with the demo's data cache, workers trust its certificate as the notebooks do
        cache = settings.get("data_cache") or {}
        add_embedded_gateway(c, state, hub_url,
                             worker_environment={"X509_CERT_DIR": cache["ca_dir"]} if cache else None)
