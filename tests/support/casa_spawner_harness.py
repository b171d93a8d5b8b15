"""Build casa spawners outside a hub: a user with groups and auth_state, the hub's URLs, the
facility issuer with a fresh key, and (for Kubernetes) the real KubeSpawner pointed at
``kube_fake_api.FakeKubeAPI``. Used by the Kubernetes, profile and hook tests."""

from __future__ import annotations

import importlib
import logging
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub.objects import Hub
from kube_fake_api import FakeKubeAPI
from kubespawner import KubeSpawner
from traitlets.config import Config

from casa_hub.tokens.issuer import CasaTokenIssuer

# the module, not the function of the same name that ``kubernetes_asyncio.config`` exports
_kube_config_module = importlib.import_module("kubernetes_asyncio.config.kube_config")

GRANTS = {
    "xcache": {"audience": "https://xcache.test", "scopes": ["storage.read:/user/{username}"],
               "groups": ["physicists"]},
    "htcondor": {"audience": "https://condor.test", "scopes": ["compute.create"],
                 "groups": ["physicists"]},
}


class FakeUser:
    """What a spawner uses of JupyterHub's User: name, groups, URLs and encrypted auth_state."""

    def __init__(self, name: str, groups: list[str], uid: int = 7) -> None:
        self.name = name
        self.id = uid
        self.groups = [SimpleNamespace(name=g) for g in groups]
        self.url = f"/user/{name}/"
        self.spawners: dict[str, Any] = {}
        self.auth_state: dict[str, Any] = {}

    async def get_auth_state(self) -> dict[str, Any]:
        return self.auth_state

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        self.auth_state = state


def base_config(key_dir: Path) -> Config:
    c = Config()
    c.CasaTokenIssuer.issuer_url = "https://hub.test/hub/casa-issuer"
    c.CasaTokenIssuer.key_dir = str(key_dir)
    c.CasaTokenIssuer.generate_key_if_missing = "ES256"
    c.CasaTokenIssuer.grants = GRANTS
    c.CasaSpawnerMixin.renewal_agent = False
    return c


def kube_config(c: Config, api: FakeKubeAPI) -> Config:
    c.KubeSpawner.k8s_api_host = api.url
    c.KubeSpawner.namespace = "casa"
    c.KubeSpawner.image = "casa-hub/notebook:0.1.0"
    c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
    c.KubeSpawner.fs_gid = 100
    c.KubeSpawner.start_timeout = 30
    c.KubeSpawner.k8s_api_request_retry_timeout = 5
    return c


def make_spawner(cls: type, config: Config, user: FakeUser, log: logging.Logger, **kw: Any) -> Any:
    """A spawner as JupyterHub's User.spawn prepares one: fresh API token, hub URLs, options."""
    CasaTokenIssuer.clear_instance()
    hub = Hub(ip="127.0.0.1", port=8081, base_url="/hub/")
    spawner = cls(user=user, hub=hub, config=config, log=log, api_token=secrets.token_hex(16),
                  oauth_client_id=f"jupyterhub-user-{user.name}", **kw)
    user.spawners[spawner.name] = spawner
    return spawner


def use_kubeconfig(api: FakeKubeAPI, path: Path) -> str:
    """Point the Kubernetes client at ``api`` through a kubeconfig file, as a hub outside the
    cluster would be; return the previous default location. (The client reads ``KUBECONFIG``
    when it is imported, so the default location is set directly.)"""
    previous = _kube_config_module.KUBE_CONFIG_DEFAULT_LOCATION
    _kube_config_module.KUBE_CONFIG_DEFAULT_LOCATION = str(api.write_kubeconfig(path))
    return previous


def restore_kubeconfig(previous: str) -> None:
    _kube_config_module.KUBE_CONFIG_DEFAULT_LOCATION = previous


def token_values(spawner: Any, user: FakeUser) -> dict[str, str]:
    """Every secret a leak test looks for: the facility tokens in auth_state and the hub API token."""
    found = {f"facility token {g}": e["token"] for g, e in user.auth_state.get("casa_tokens", {}).items()}
    found["JupyterHub API token"] = spawner.api_token
    return found


@pytest.fixture(scope="module", name="api")
async def kube_api_fixture(tmp_path_factory):
    """A recording Kubernetes API stand-in for one test module, with KubeSpawner pointed at it."""
    fake = FakeKubeAPI()
    fake.start()
    previous = use_kubeconfig(fake, tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield fake
    await KubeSpawner._stop_all_reflectors()
    await fake.stop()
    restore_kubeconfig(previous)
