"""Unit tests of the Dask integration's settings, env, dask config file and hub configuration.

No services run here; tests/test_dask_gateway_e2e.py runs the same code against a real hub and
a real Dask Gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from traitlets.config import Config, LoggingConfigurable

from casa_hub.dask.local import FacilityLocalBackend, FacilityLocalClusterConfig
from casa_hub.integrations.base import SpawnContext
from casa_hub.integrations.dask.credentials import (
    NOTE,
    MissingGatewayScope,
    gateway_scope,
    issue_user_token,
)
from casa_hub.integrations.dask.gateway_service import (
    SERVER_ROLE_SCOPES,
    add_embedded_gateway,
    enable_gateway_access,
)
from casa_hub.integrations.dask.integration import CLUSTER_ENV, DaskIntegration, _matches
from casa_hub.tokens.broker import RENEW_SCOPE, enable_broker

TOKEN = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXN0b3JhZ2UtdG9rZW4.c2ln"  # stands for a facility token value
SCOPE = "access:services!service=dask-gateway"


class FakeSpawner(LoggingConfigurable):
    """What the integration reads from its spawner (``parent``), nothing more."""

    def __init__(self, user_options: dict | None = None, **kw) -> None:
        super().__init__(**kw)
        self.user_options = user_options or {}
        self.user = SimpleNamespace(name="alice", spawners={})
        self.events: list[tuple[str, str]] = []

    def casa_progress(self, step: str, message: str, progress: int | None = None) -> None:
        self.events.append((step, message))


def make(config: dict, user_options: dict | None = None) -> DaskIntegration:
    cfg = Config({"DaskIntegration": config})
    return DaskIntegration(parent=FakeSpawner(user_options, config=cfg), config=cfg)


def ctx() -> SpawnContext:
    return SpawnContext("alice", ["physicists"], "/home/alice/.casa/tokens", "/home/alice/.casa/config",
                        {"xcache": TOKEN})


SITE = {
    "gateway_url": "https://hub.example.org/services/dask-gateway",
    "gateway_api_url": "http://traefik-dask-gateway/services/dask-gateway",
    "proxy_address": "gateway://traefik-dask-gateway:80",
    "public_address": "https://hub.example.org/services/dask-gateway",
}


async def test_env_names_the_gateway_cluster_and_config_file_but_holds_no_token():
    dask = make(SITE)
    dask._options = await dask.options_for_spawn()
    dask.cluster_name = "c0ffee"
    part = dask.contribute(ctx())
    assert part.env == {
        "DASK_GATEWAY__ADDRESS": "https://hub.example.org/services/dask-gateway",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_GATEWAY__PROXY_ADDRESS": "gateway://traefik-dask-gateway:80",
        "DASK_GATEWAY__PUBLIC_ADDRESS": "https://hub.example.org/services/dask-gateway",
        "DASK_CONFIG": "/home/alice/.casa/config/dask-gateway.yaml",
        CLUSTER_ENV: "c0ffee",
    }, "the notebook must get the gateway's addresses, JupyterHub auth, the cluster and the config file"
    assert list(part.files) == ["dask-gateway.yaml"]
    everything = json.dumps(part.env) + part.files["dask-gateway.yaml"].decode()
    assert TOKEN not in everything and "token" not in everything.lower(), \
        "no token (nor a token setting) may be in the env or the dask config: the notebook uses its own"


async def test_dask_config_file_holds_gateway_auth_options_and_cluster():
    dask = make(dict(SITE, cluster_options={"worker_cores": 2}), {"dask_cluster_options": {"worker_memory": 3}})
    dask._options = await dask.options_for_spawn()
    dask.cluster_name = "c0ffee"
    text = dask.contribute(ctx()).files["dask-gateway.yaml"].decode()
    assert yaml.safe_load(text) == {
        "gateway": {
            "address": "https://hub.example.org/services/dask-gateway",
            "auth": {"type": "jupyterhub"},
            "proxy-address": "gateway://traefik-dask-gateway:80",
            "public-address": "https://hub.example.org/services/dask-gateway",
            "cluster": {"options": {"worker_cores": 2, "worker_memory": 3}},
        },
        "casa-hub": {"dask": {"cluster": "c0ffee"}},
    }, "the file must hold the gateway settings, the spawn's cluster options and the cluster's name"


def test_dask_reads_the_config_file_through_DASK_CONFIG(tmp_path):
    dask = make(SITE)
    dask._options = {"worker_cores": 2}
    dask.cluster_name = "c0ffee"
    path = tmp_path / "dask-gateway.yaml"
    path.write_bytes(dask.contribute(ctx()).files["dask-gateway.yaml"])
    code = ("import json, dask.config, casa_hub.dask as d; print(json.dumps([dask.config.get('gateway.address'), "
            "dask.config.get('gateway.auth.type'), dask.config.get('gateway.cluster.options'), d.cluster_name()]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "CASA_"))}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, DASK_CONFIG=str(path)), check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert json.loads(out) == [SITE["gateway_url"], "jupyterhub", {"worker_cores": 2}, "c0ffee"], \
        "dask (and casa_hub.dask.cluster_name) must read the gateway settings and cluster from the file"


async def test_options_merge_site_profile_and_spawn_in_that_order():
    async def site(spawner):
        return {"worker_cores": 1, "worker_memory": 1, "idle_timeout": 600}

    dask = make({"gateway_url": SITE["gateway_url"], "cluster_options": site},
                {"dask_cluster_options": {"worker_memory": 4}, "other": 1})
    dask.parent.casa_profile = SimpleNamespace(dask_cluster_options={"worker_cores": 2, "worker_memory": 2})
    assert await dask.options_for_spawn() == {"worker_cores": 2, "worker_memory": 4, "idle_timeout": 600}, \
        "site options, then the profile's, then the spawn's user_options must win in that order"


@pytest.mark.parametrize("setting, value, problem", [
    ("gateway_url", "", "gateway_url is not set"),
    ("gateway_url", "ftp://x", "must be a URL like https://"),
    ("proxy_address", "gateway://host:8786/path", "must look like gateway://host:port"),
    ("proxy_address", "http://host:80", "must look like gateway://host:port"),
    ("adapt", {"minimum": 0, "maximum": 4, "wait_count": 3}, "only 'minimum' and 'maximum'"),
])
async def test_a_misconfigured_gateway_is_skipped_with_the_reason(setting, value, problem):
    dask = make(dict(SITE, **{setting: value}))
    assert problem in (dask.configuration_problem() or ""), f"{setting}={value!r} must be reported"
    await dask.prepare(ctx())
    assert dask.cluster_name is None and dask.contribute(ctx()).env == {}, \
        "a misconfigured gateway must give the notebook no Dask settings and create no cluster"


def test_proxy_address_may_be_host_and_port():
    assert make(dict(SITE, proxy_address="traefik:8786")).configuration_problem() is None


def test_reuse_needs_every_requested_option_to_match():
    assert _matches({"worker_cores": 2, "worker_memory": 1.0}, {"worker_cores": 2})
    assert _matches({"worker_cores": 2}, {})
    assert not _matches({"worker_cores": 1}, {"worker_cores": 2})


def test_hub_token_for_the_user_has_only_the_gateway_scope_and_a_lifetime():
    made = []
    user = SimpleNamespace(name="alice", new_api_token=lambda **kw: made.append(kw) or "t")
    assert issue_user_token(user, "dask-gateway", 90.5) == "t"
    assert made == [{"scopes": [SCOPE], "expires_in": 90, "note": NOTE}], \
        "the hub's token for a user's cluster must carry only the gateway scope and expire"


def test_missing_scope_names_the_fix():
    def refuse(**kw):
        raise ValueError("Not assigning requested scopes access:services!service=dask-gateway not held by User alice")

    with pytest.raises(MissingGatewayScope, match="enable_gateway_access"):
        issue_user_token(SimpleNamespace(name="alice", new_api_token=refuse), "dask-gateway", 60)


def test_gateway_access_is_added_to_users_and_server_tokens_after_the_broker():
    c = Config()
    enable_broker(c)
    enable_gateway_access(c)
    enable_gateway_access(c)  # twice: no duplicates
    user_role = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert user_role["scopes"] == ["self", f"{RENEW_SCOPE}!user", SCOPE], \
        "users must keep the broker scope and gain the gateway's access scope once"
    assert c.Spawner.server_token_scopes == ["users:activity!user", "access:servers!server", f"{RENEW_SCOPE}!user", SCOPE]


def test_gateway_access_keeps_jupyterhubs_server_scopes_when_unset():
    c = Config()
    enable_gateway_access(c, "gw")
    assert c.Spawner.server_token_scopes == [*SERVER_ROLE_SCOPES, gateway_scope("gw")]
    assert c.JupyterHub.load_roles == [{"name": "user", "scopes": ["self", gateway_scope("gw")]}]


def test_gateway_access_extends_a_callable_server_token_scopes():
    c = Config()
    c.Spawner.server_token_scopes = lambda spawner: ["users:activity!user"]
    enable_gateway_access(c)
    assert c.Spawner.server_token_scopes(None) == ["users:activity!user", SCOPE]


def test_embedded_gateway_is_a_managed_service_on_loopback(tmp_path):
    c = Config()
    c.JupyterHub.services = [{"name": "casa-demo-admin", "api_token": "x"}]
    settings = add_embedded_gateway(c, tmp_path, "http://127.0.0.1:8000/")
    names = [s["name"] for s in c.JupyterHub.services]
    assert names == ["casa-demo-admin", "dask-gateway"], "existing services must be kept"
    service = c.JupyterHub.services[1]
    assert service["url"] == f"http://127.0.0.1:{settings['http_port']}"
    assert service["command"][1:4] == ["-m", "dask_gateway_server", "-f"]
    assert json.loads(Path(service["environment"]["CASA_GATEWAY_SETTINGS"]).read_text()) == settings
    assert c.DaskIntegration.gateway_url == "http://127.0.0.1:8000/services/dask-gateway"
    assert c.DaskIntegration.proxy_address == f"gateway://127.0.0.1:{settings['tcp_port']}"
    assert oct((tmp_path / "dask-gateway").stat().st_mode & 0o777) == "0o700"


def test_local_backend_runs_this_environments_dask_command():
    config = FacilityLocalClusterConfig()
    bin_dir = Path(sys.executable).parent
    assert config.scheduler_cmd == [str(bin_dir / "dask"), "scheduler"]
    assert config.worker_cmd == [str(bin_dir / "dask"), "worker"]
    assert (bin_dir / "dask").exists(), "the dask command must exist where the backend runs it"
    backend = FacilityLocalBackend()
    assert backend.cluster_config_class is FacilityLocalClusterConfig
    assert backend.run_as_user is False and backend.niceness == 10


def test_get_client_without_a_cluster_says_why(monkeypatch):
    from casa_hub.dask import NoClusterError, get_client

    monkeypatch.delenv(CLUSTER_ENV, raising=False)
    monkeypatch.setenv("DASK_CONFIG", "/nonexistent")
    with pytest.raises(NoClusterError, match=r"CASA_DASK_CLUSTER is not set.*new_cluster"):
        get_client()


async def test_a_spawn_may_ask_for_no_cluster():
    dask = make(SITE, {"dask_cluster_options": False})
    await dask.prepare(ctx())
    assert dask.cluster_name is None and dask.parent.events == [], \
        "user_options {dask_cluster_options: false} must skip pre-creation without asking the gateway"
    env = dask.contribute(ctx()).env
    assert CLUSTER_ENV not in env and env["DASK_GATEWAY__ADDRESS"] == SITE["gateway_url"]


async def test_the_clusters_name_survives_a_hub_restart_in_the_spawners_state():
    from casa_hub.spawner import CasaLocalProcessSpawner

    cfg = Config({"CasaSpawnerMixin": {"integration_classes": [DaskIntegration]},
                  "DaskIntegration": dict(SITE, shutdown_on_stop=False)})
    running = CasaLocalProcessSpawner(config=cfg)
    running.integrations[0].cluster_name = "c0ffee"
    state = running.get_state()
    assert state["casa_integrations"] == {"dask": {"cluster": "c0ffee"}}
    restarted = CasaLocalProcessSpawner(config=cfg)  # the hub restarted: a new spawner, same state
    restarted.load_state(state)
    assert restarted.integrations[0].cluster_name == "c0ffee", "the hub must still know the cluster to stop it"
    await restarted.run_post_stop_hook()  # after the stop, the integrations release their resources
    assert restarted.integrations[0].cluster_name is None and "casa_integrations" not in restarted.get_state()
