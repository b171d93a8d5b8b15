"""Hub configuration for Dask Gateway: access for users, and the embedded gateway of the demo.

The one way to give access is the site file: an ``integrations.dask`` section makes the
integrations drop-in call ``enable_gateway_access`` with the section's ``service_name`` and
``access_groups`` (after the tokens drop-in, whose ``enable_broker`` rewrites the ``user`` role)::

    integrations:
      dask:
        gateway_url: https://hub.example.org/services/dask-gateway
        access_groups: [physicists]

``add_embedded_gateway`` also runs a gateway with the local backend as a managed JupyterHub
service, on free ports of 127.0.0.1 (``casa-hub demo``, tests, benchmarks), and configures it the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casa_hub.common.ports import free_port
from casa_hub.integrations.dask.credentials import gateway_scope

SERVICE_NAME = "dask-gateway"
GATEWAY_CONFIG = Path(__file__).resolve().parent / "embedded_gateway_config.py"
#: what JupyterHub's ``server`` role gives a server's token; kept when we add the gateway scope
SERVER_ROLE_SCOPES = ["users:activity!user", "access:servers!server"]


def gateway_available() -> bool:
    """Whether dask-gateway-server is installed in the hub's environment."""
    return importlib.util.find_spec("dask_gateway_server") is not None


#: the role that gives ``access_groups`` the gateway's scope
ACCESS_ROLE = "casa-dask-gateway"


def enable_gateway_access(c: Any, service_name: str = SERVICE_NAME, groups: list[str] | None = None) -> None:
    """Let users (all, or the members of ``groups``), and their servers' ``JUPYTERHUB_API_TOKEN``,
    use the gateway service.

    Adds ``access:services!service=<service_name>`` to the ``user`` role (or to the role
    ``casa-dask-gateway`` held by ``groups``) and to ``Spawner.server_token_scopes``: the one scope
    the gateway's JupyterHubAuthenticator checks (besides identifying the token's owner, which every
    token may do). JupyterHub gives a server's token only the scopes its owner holds, and the hub's
    own short-lived token for a user's cluster (``casa_hub.integrations.dask.credentials``) can only
    hold it if the user does.
    """
    scope = gateway_scope(service_name)
    hub = c.JupyterHub
    roles = [dict(r) for r in hub.load_roles] if "load_roles" in hub else []
    name = ACCESS_ROLE if groups else "user"
    role = next((r for r in roles if r.get("name") == name), None)
    if role is None:
        role = {"name": name, "scopes": ["self"] if name == "user" else []}
        if groups:
            role["description"] = "Create and use Dask clusters in the facility's Dask Gateway."
        roles.append(role)
    if scope not in role.get("scopes", []):
        role["scopes"] = [*role.get("scopes", []), scope]
    if groups:
        role["groups"] = sorted({*role.get("groups", []), *groups})
    hub.load_roles = roles

    spawner = c.Spawner
    current = spawner.server_token_scopes if "server_token_scopes" in spawner else SERVER_ROLE_SCOPES
    if callable(current):
        spawner.server_token_scopes = _with_scope(current, scope)
    elif scope not in current:
        spawner.server_token_scopes = [*current, scope]


def _with_scope(scopes: Callable[[Any], Any], scope: str) -> Callable[[Any], Any]:
    def server_token_scopes(spawner: Any) -> Any:
        chosen = scopes(spawner)
        if hasattr(chosen, "__await__"):
            async def add() -> list[str]:
                return [*(await chosen), scope]
            return add()
        return [*chosen, scope]

    return server_token_scopes


def add_embedded_gateway(
    c: Any,
    state_dir: Path,
    hub_url: str,
    *,
    service_name: str = SERVICE_NAME,
    idle_timeout: float = 1800,
    max_workers: int = 4,
    initial_workers: int = 1,
    worker_environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run Dask Gateway (local backend) as the managed JupyterHub service ``service_name`` and
    configure notebooks for it: each user's server starts with a cluster of ``initial_workers``.

    ``hub_url`` is the hub's public URL (notebooks reach the gateway through the hub's proxy at
    ``<hub_url>/services/<service_name>``). Writes the gateway's settings to
    ``<state_dir>/dask-gateway/settings.json`` and returns them. ``worker_environment``: variables
    every scheduler and worker gets (paths and settings only, never a credential), e.g. ``X509_CERT_DIR``.
    """
    from casa_hub.integrations.dask.integration import (
        DaskIntegration,  # the hub config imports this module
    )

    home = Path(state_dir) / "dask-gateway"
    (home / "clusters").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    settings = {
        "api_port": free_port(),
        "http_port": free_port(),
        "tcp_port": free_port(),
        "prefix": f"/services/{service_name}",
        "clusters_dir": str(home / "clusters"),
        "idle_timeout": float(idle_timeout),
        "max_workers": int(max_workers),
        "max_worker_cores": os.cpu_count() or 1,
        "max_worker_memory_gib": 4,
        "environment": dict(worker_environment or {}),
    }
    settings_file = home / "settings.json"
    settings_file.write_text(json.dumps(settings, indent=2))

    hub = c.JupyterHub
    services = [dict(s) for s in hub.services] if "services" in hub else []
    services = [s for s in services if s.get("name") != service_name]
    services.append({
        "name": service_name,
        "url": f"http://127.0.0.1:{settings['http_port']}",
        "command": [sys.executable, "-m", "dask_gateway_server", "-f", str(GATEWAY_CONFIG)],
        "environment": {"CASA_GATEWAY_SETTINGS": str(settings_file)},
        "cwd": str(home),
        "display": False,
    })
    hub.services = services
    enable_gateway_access(c, service_name)

    c.CasaSpawnerMixin.integration_classes.append(DaskIntegration)
    c.DaskIntegration.service_name = service_name
    c.DaskIntegration.gateway_url = f"{hub_url.rstrip('/')}/services/{service_name}"
    c.DaskIntegration.gateway_api_url = f"http://127.0.0.1:{settings['http_port']}/services/{service_name}"
    c.DaskIntegration.proxy_address = f"gateway://127.0.0.1:{settings['tcp_port']}"
    c.DaskIntegration.initial_workers = initial_workers
    return settings
