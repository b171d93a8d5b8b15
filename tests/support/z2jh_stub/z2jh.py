"""Test stand-in for Zero to JupyterHub's ``z2jh`` module (the chart's helper beside its hub config).

The chart renders the Helm values into a Secret mounted in the hub pod and its ``z2jh.get_config``
reads them by dotted key. Here the values come from the YAML file named by ``$CASA_Z2JH_VALUES``
(``helm-values.yaml`` in the tests), merged over the few chart defaults the stand-in hub config
reads. Secrets the chart generates (service API tokens, its own crypt key) are fixed test strings.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

#: chart defaults the stand-in hub config (``jupyterhub_config.py`` here) reads
CHART_DEFAULTS: dict[str, Any] = {
    "Chart": {"Name": "jupyterhub", "Version": "4.4.0"},
    "Release": {"Name": "casa", "Namespace": "casa"},
    "hub": {"config": {"JupyterHub": {"admin_access": True, "authenticator_class": "dummy"}},
            "services": {}, "loadRoles": {}, "extraConfig": {}},
    "singleuser": {"cmd": "jupyterhub-singleuser", "defaultUrl": None, "fsGid": 100,
                   "profileList": [], "image": {"name": "quay.io/jupyterhub/k8s-singleuser-sample",
                                                "tag": "4.4.0"},
                   "extraLabels": {"hub.jupyter.org/network-access-hub": "true"}},
    "cull": {"enabled": True},
}
#: what the chart generates and keeps in its Secret, by key
CHART_SECRETS = {"hub.config.CryptKeeper.keys": "00" * 32}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(a[key], value) if isinstance(a.get(key), dict) and isinstance(value, dict) else value
    return out


def _values() -> dict[str, Any]:
    with open(os.environ["CASA_Z2JH_VALUES"]) as f:
        return _merge(CHART_DEFAULTS, yaml.safe_load(f) or {})


def get_config(key: str, default: Any = None) -> Any:
    """The value at ``key`` ("a.b.c") of the Helm values, or ``default``."""
    value: Any = _values()
    for level in key.split("."):
        if not isinstance(value, dict) or level not in value:
            return default
        value = value[level]
    return value


def get_secret_value(key: str, default: Any = "never-explicitly-set") -> Any:
    if key in CHART_SECRETS:
        return CHART_SECRETS[key]
    if key.startswith("hub.services.") and key.endswith(".apiToken"):
        return f"chart-generated-token-for-{key.split('.')[2]}"
    if default != "never-explicitly-set":
        return default
    raise KeyError(f"{key} not found in the chart's Secret")


def set_config_if_not_none(cparent: Any, name: str, key: str) -> None:
    data = get_config(key)
    if data is not None:
        setattr(cparent, name, data)
