"""One site file (or the Helm values) for the drop-ins in ``jupyterhub_config.d/``.

The settings are read from, first found:

1. Zero to JupyterHub's values: ``custom.casa`` through the chart's ``z2jh.get_config``;
2. the YAML or JSON file named by ``$CASA_SITE_CONFIG`` (default ``/etc/casa/site.yaml``).

Each section names one casa_hub class, and its keys are that class's settings (the names in the
README's settings tables), so ``tokens: {issuer_url: ...}`` is ``c.CasaTokenIssuer.issuer_url``. A
value ``{"env": "NAME"}`` is read from the environment variable ``NAME``, and ``{"file": "/abs/path"}``
from a file (for secrets, e.g. a mounted Kubernetes Secret). Every value is
checked by the class itself while the hub loads its configuration: an unknown key or a bad value
stops the hub with a message naming it, e.g. ``casa.tokens.grants: ...``.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from pathlib import Path
from typing import Any

from traitlets import TraitError

DEFAULT_SITE_FILE = "/etc/casa/site.yaml"

#: section -> "module:Class" whose configurable traits are the section's keys
SECTIONS = {
    "hub": "casa_hub.hub_server:CasaHubServer",
    "facility": "casa_hub.pages.facility_info:CasaFacility",
    "auth": "casa_hub.auth.authenticator:CasaOIDCAuthenticator",
    "tokens": "casa_hub.tokens.issuer:CasaTokenIssuer",
    "spawner": "casa_hub.spawner.mixin:CasaSpawnerMixin",
    "profiles": "casa_hub.spawner.profiles:CasaProfiles",
}
#: integrations.<name> -> class; the drop-in enables exactly the integrations named in the file
INTEGRATIONS = {
    "xcache": "casa_hub.integrations.xcache:XCacheIntegration",
    "servicex": "casa_hub.integrations.servicex.integration:ServiceXIntegration",
    "htcondor": "casa_hub.integrations.htcondor:HTCondorIntegration",
    "triton": "casa_hub.integrations.triton:TritonIntegration",
    "mlflow": "casa_hub.integrations.mlflow.integration:MLflowIntegration",
    "dask": "casa_hub.integrations.dask.integration:DaskIntegration",
}
SPAWNERS = {"local": "casa-local", "kube": "casa-kube"}
TOP_LEVEL = {*SECTIONS, "integrations", "spawner_kind", "metrics_public"}


class SiteSettingsError(ValueError):
    """The site file or ``custom.casa`` has an unknown key or a bad value; the message names it."""


def _load_class(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def read_site_settings(path: str | None = None) -> dict[str, Any]:
    """The site's casa settings (``{}`` when there are none)."""
    try:
        from z2jh import get_config  # the Zero to JupyterHub hub image

        values = get_config("custom.casa", None)
        if values is not None:
            return _checked_mapping(values, "casa")
    except ImportError:
        pass
    path = path or os.environ.get("CASA_SITE_CONFIG", DEFAULT_SITE_FILE)
    file = Path(path)
    if not file.exists():
        if os.environ.get("CASA_SITE_CONFIG"):
            raise SiteSettingsError(f"CASA_SITE_CONFIG names {path}, which does not exist")
        return {}
    text = file.read_text()
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml and json errors carry the line
        raise SiteSettingsError(f"{path} is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {e}") from None
    return _checked_mapping(data or {}, "casa")


def _checked_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SiteSettingsError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _resolve_env(value: Any, where: str) -> Any:
    """Replace ``{"env": NAME}`` by the environment variable's value and ``{"file": PATH}`` by the
    file's content (a mounted Secret, say; one trailing newline is dropped), recursively."""
    if isinstance(value, dict) and set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or not name:
            raise SiteSettingsError(f"{where}: {{env: NAME}} needs the name of an environment variable")
        if name not in os.environ:
            raise SiteSettingsError(f"{where} is read from the environment variable {name}, which is not set")
        return os.environ[name]
    if isinstance(value, dict) and set(value) == {"file"}:
        path = value["file"]
        if not isinstance(path, str) or not os.path.isabs(path):
            raise SiteSettingsError(f"{where}: {{file: PATH}} needs an absolute path")
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise SiteSettingsError(f"{where} is read from the file {path}, which cannot be read ({e.strerror})") from None
        return text[:-1] if text.endswith("\n") else text
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _unknown(key: Any, known: list[str], where: str) -> SiteSettingsError:
    close = difflib.get_close_matches(str(key), known, n=3)  # YAML keys may be numbers, null, ...
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    return SiteSettingsError(f"{where}.{key} is not a setting{hint}")


def apply_section(c: Any, section: dict[str, Any], cls: type, where: str) -> None:
    """Check ``section`` against ``cls``'s settings and put it into the config ``c``."""
    section = _checked_mapping(section, where)
    traits = cls.class_traits(config=True)
    probe = None
    for key, raw in section.items():
        if key not in traits:
            raise _unknown(key, list(traits), where)
        value = _resolve_env(raw, f"{where}.{key}")
        if probe is None:
            probe = cls()
        try:
            setattr(probe, key, value)  # the class's own validation, as at hub start
        except (TraitError, ValueError, TypeError) as e:
            raise SiteSettingsError(f"{where}.{key}: {e}") from None
        c[cls.__name__][key] = value


def apply(c: Any, part: str, settings: dict[str, Any] | None = None) -> None:
    """Apply one drop-in's part of the site settings to the hub config ``c``."""
    settings = read_site_settings() if settings is None else settings
    for key in settings:
        if key not in TOP_LEVEL:
            raise _unknown(key, sorted(TOP_LEVEL), "casa")
    if part == "auth":
        from casa_hub.hub_server import limit_request_bodies

        apply_section(c, settings.get("hub", {}), _load_class(SECTIONS["hub"]), "casa.hub")
        limit_request_bodies(c)  # before the hub creates its HTTP server (casa_hub.hub_server)
        c.JupyterHub.authenticator_class = "casa-oidc"
        apply_section(c, settings.get("auth", {}), _load_class(SECTIONS["auth"]), "casa.auth")
        if not c.CasaOIDCAuthenticator.get("admin_reads_auth_state", False):
            from casa_hub.auth.roles import add_facility_admin_role

            # admins from admin_groups get every admin scope but admin:auth_state (casa_hub.auth.roles)
            add_facility_admin_role(c, c.CasaOIDCAuthenticator.get("admin_groups", []))
        apply_section(c, settings.get("facility", {}), _load_class(SECTIONS["facility"]), "casa.facility")
    elif part == "tokens":
        from casa_hub.tokens.broker import enable_broker

        apply_section(c, settings.get("tokens", {}), _load_class(SECTIONS["tokens"]), "casa.tokens")
        enable_broker(c)
    elif part == "spawner":
        kind = settings.get("spawner_kind", "kube")
        if not isinstance(kind, str) or kind not in SPAWNERS:
            raise SiteSettingsError(f"casa.spawner_kind must be one of {', '.join(SPAWNERS)}, not {kind!r}")
        c.JupyterHub.spawner_class = SPAWNERS[kind]
        apply_section(c, settings.get("spawner", {}), _load_class(SECTIONS["spawner"]), "casa.spawner")
        apply_section(c, settings.get("profiles", {}), _load_class(SECTIONS["profiles"]), "casa.profiles")
    elif part == "integrations":
        integrations = _checked_mapping(settings.get("integrations", {"xcache": {}}), "casa.integrations")
        classes = []
        for name, section in integrations.items():
            if name not in INTEGRATIONS:
                raise _unknown(name, list(INTEGRATIONS), "casa.integrations")
            cls = _load_class(INTEGRATIONS[name])
            apply_section(c, section or {}, cls, f"casa.integrations.{name}")
            classes.append(cls)
        c.CasaSpawnerMixin.integration_classes = classes
        if "dask" in integrations:  # the one place that gives users and servers the gateway's scope
            from casa_hub.integrations.dask.gateway_service import (
                SERVICE_NAME,
                enable_gateway_access,
            )

            dask = integrations["dask"] or {}
            enable_gateway_access(c, dask.get("service_name", SERVICE_NAME), list(dask.get("access_groups", [])))
    elif part == "metrics":
        public = settings.get("metrics_public", False)
        if not isinstance(public, bool):
            raise SiteSettingsError("casa.metrics_public must be true or false")
        c.JupyterHub.authenticate_prometheus = not public
    else:
        raise SiteSettingsError(f"unknown drop-in part {part!r}")
