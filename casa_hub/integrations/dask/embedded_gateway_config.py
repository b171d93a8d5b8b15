# Configuration of the embedded Dask Gateway (dask-gateway-server -f <this file>), run by the hub
# as the managed JupyterHub service that casa_hub.integrations.dask.gateway_service.add_embedded_gateway declares.
# Its settings (ports, directories, limits) come from the JSON file named by CASA_GATEWAY_SETTINGS.
# Everything listens on 127.0.0.1. Settings live under c.DaskGateway / c.Proxy / c.<Backend>
# (dask-gateway-server ignores c.Gateway).
import json
import os
from pathlib import Path

from dask_gateway_server.options import Float, Integer, Options

c = get_config()  # noqa: F821 - provided by dask-gateway-server

settings = json.loads(Path(os.environ["CASA_GATEWAY_SETTINGS"]).read_text())

# --- the gateway's private API and its proxy (HTTP API + dashboards, and TLS scheduler traffic)
c.DaskGateway.address = f"127.0.0.1:{settings['api_port']}"
c.DaskGateway.log_level = settings.get("log_level", "INFO")
c.Proxy.address = f"127.0.0.1:{settings['http_port']}"
c.Proxy.tcp_address = f"127.0.0.1:{settings['tcp_port']}"
c.Proxy.prefix = settings["prefix"]  # JupyterHub routes /services/<name>/ here

# --- users: authenticated by JupyterHub (JUPYTERHUB_API_TOKEN/_URL/_SERVICE_NAME come from the hub);
# a token needs access:services!service=<name> and a cluster belongs to the token's user
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"

# --- clusters: local processes
c.DaskGateway.backend_class = settings.get("backend_class", "casa_hub.dask.local.FacilityLocalBackend")
c.FacilityLocalBackend.clusters_directory = settings["clusters_dir"]
c.ClusterConfig.idle_timeout = float(settings["idle_timeout"])  # culls clusters idle this long
c.ClusterConfig.cluster_max_workers = int(settings["max_workers"])
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.environment = settings.get("environment", {})  # paths only (e.g. X509_CERT_DIR)


def _per_cluster(options, user):  # noqa: ANN001, ANN202 - dask-gateway's handler signature
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "idle_timeout": options.idle_timeout,
    }


# what a user (or the profile the hub spawns with) may choose per cluster
c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=int(settings["max_worker_cores"]), label="Worker cores"),
    Float("worker_memory", default=1.0, min=0.25, max=float(settings["max_worker_memory_gib"]),
          label="Worker memory (GiB)"),
    Float("idle_timeout", default=float(settings["idle_timeout"]), min=1.0,
          max=float(settings["idle_timeout"]), label="Shut down after this many idle seconds"),
    handler=_per_cluster,
)
