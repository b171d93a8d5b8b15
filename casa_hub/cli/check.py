"""``casa-hub check CONFIG``: validate a hub configuration before (or while) the hub runs.

The configuration is loaded the way JupyterHub loads it (``JupyterHub.load_config_file``, so
``load_subconfig`` and drop-in directories work), then every casa_hub setting is validated and the
identity provider, the issuer's publication and the configured service endpoints are contacted.
Each finding is one line: ``ok``, ``warn`` or ``error``; any error gives a non-zero exit status.
Secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from traitlets import TraitError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Finding:
    level: str  # ok | warn | error
    topic: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<5} {self.topic}: {self.message}"


class Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, level: str, topic: str, message: str) -> None:
        self.findings.append(Finding(level, topic, message))

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def guard(self, topic: str, fn: Callable[[], Any]) -> Any:
        """Run one check; an exception becomes an error line naming what failed."""
        try:
            return fn()
        except (TraitError, ValueError, RuntimeError, OSError, KeyError, TypeError) as e:
            self.add("error", topic, str(e) or type(e).__name__)
            return None


def load_hub(config_file: str) -> Any:
    """A JupyterHub application with ``config_file`` loaded, not started."""
    from jupyterhub.app import JupyterHub

    app = JupyterHub()
    app.raise_config_file_errors = True
    path = Path(config_file).resolve()
    app.load_config_file(str(path.name), path=str(path.parent))
    return app


def _http_get(url: str, timeout: float = 5.0) -> int:
    ctx = ssl.create_default_context()
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:  # noqa: S310 - admin's URL
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _tcp_reachable(url: str, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the URL's host and port succeeds, else the reason."""
    parsed = urlparse(url)
    port = parsed.port or {"https": 443, "http": 80, "root": 1094, "roots": 1094}.get(parsed.scheme)
    if not parsed.hostname or not port:
        return f"cannot tell host and port from {url!r}"
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def check_auth(app: Any, report: Report, online: bool) -> None:
    auth_class = report.guard("JupyterHub.authenticator_class", lambda: app.authenticator_class)
    if auth_class is None:
        return
    from casa_hub.auth.authenticator import CasaOIDCAuthenticator

    if not issubclass(auth_class, CasaOIDCAuthenticator):
        report.add("warn", "JupyterHub.authenticator_class",
                   f"{auth_class.__name__} is not CasaOIDCAuthenticator; casa_hub login checks skipped")
        return
    auth = report.guard("CasaOIDCAuthenticator", lambda: auth_class(parent=app))
    if auth is None:
        return
    report.add("ok", "JupyterHub.authenticator_class", auth_class.__name__)
    if not auth.oidc_issuer:
        report.add("error", "CasaOIDCAuthenticator.oidc_issuer", "is not set")
    if not auth.client_id:
        report.add("error", "CasaOIDCAuthenticator.client_id", "is not set (or env OAUTH_CLIENT_ID)")
    if not auth.client_secret:
        report.add("error", "CasaOIDCAuthenticator.client_secret", "is not set (use env OAUTH_CLIENT_SECRET)")
    if not auth.oauth_callback_url:
        report.add("warn", "CasaOIDCAuthenticator.oauth_callback_url",
                   "is not set; it is derived from the request, which is wrong behind most proxies")
    if auth.enable_auth_state:
        key = os.environ.get("JUPYTERHUB_CRYPT_KEY", "")
        if not key:
            report.add("error", "JUPYTERHUB_CRYPT_KEY", "auth_state is enabled but the env var is not set")
        else:
            try:
                ok = len(bytes.fromhex(key.split(";")[0])) == 32
            except ValueError:
                ok = False
            report.add("ok" if ok else "error", "JUPYTERHUB_CRYPT_KEY",
                       "set" if ok else "must be 32 bytes as 64 hex digits (openssl rand -hex 32)")
    else:
        report.add("error", "CasaOIDCAuthenticator.enable_auth_state",
                   "is False: provider and facility tokens cannot be kept")
    if online and auth.oidc_issuer:
        from casa_hub.auth.oidc import OIDCError, discover

        try:
            meta = asyncio.run(discover(auth.oidc_issuer, attempts=1, validate_cert=auth.validate_server_cert))
        except OIDCError as e:
            report.add("error", "CasaOIDCAuthenticator.oidc_issuer", f"discovery failed: {e}")
        else:
            extra = ", ".join(n for n, v in (("end_session", meta.end_session_endpoint),
                                             ("revocation", meta.revocation_endpoint)) if v)
            report.add("ok", "CasaOIDCAuthenticator.oidc_issuer",
                       f"provider {meta.issuer} answers discovery" + (f" ({extra} endpoints)" if extra else ""))


def check_issuer(app: Any, report: Report, online: bool) -> None:
    from casa_hub.tokens.issuer import CasaTokenIssuer

    issuer = report.guard("CasaTokenIssuer", lambda: CasaTokenIssuer(config=app.config))
    if issuer is None:
        return
    if report.guard("CasaTokenIssuer", issuer.check_config) is None and not report.ok:
        return
    url = urlparse(issuer.issuer_url)
    if url.scheme != "https" and url.hostname not in LOOPBACK:
        report.add("warn", "CasaTokenIssuer.issuer_url",
                   "is not https: XRootD and HTCondor refuse such issuers")
    ring = issuer.keyring
    roles = ", ".join(f"{d['role']} {d['alg']} {d['kid'][:12]}" for d in ring.describe())
    report.add("ok", "CasaTokenIssuer keys", roles)
    for name, grant in issuer.parsed_grants.items():
        who = ", ".join(grant.groups) if grant.groups else "all users"
        report.add("ok", f"CasaTokenIssuer.grants['{name}']",
                   f"aud {grant.audience}, {grant.lifetime} s, for {who}")
    if not issuer.parsed_grants:
        report.add("warn", "CasaTokenIssuer.grants", "no grants: notebooks receive no facility tokens")
    if online:
        where = f"{issuer.issuer_url.rstrip('/')}/.well-known/openid-configuration"
        try:
            status = _http_get(where)
        except OSError as e:
            report.add("warn", "issuer publication", f"{where} unreachable ({e}); is the hub running?")
        else:
            report.add("ok" if status == 200 else "warn", "issuer publication", f"{where} answered {status}")


def check_storage_prefixes(app: Any, report: Report, online: bool) -> None:
    """Per-user storage scopes on XRootD < 5.6.9: its SciTokens plugin matches scope paths as string
    prefixes, so bob's ``/user/bob`` also reads ``/user/bobby`` unless the servers run the
    configuration of ``casa-hub site-config xrootd --prefix-safe``."""
    from casa_hub.tokens.issuer import CasaTokenIssuer
    from casa_hub.tokens.site_snippets import (
        detect_xrootd_version,
        parse_xrootd_version,
        storage_scope_paths,
        xrootd_matches_prefixes,
    )

    try:
        grants = CasaTokenIssuer(config=app.config).parsed_grants
    except (TraitError, ValueError):
        return  # check_issuer reports it
    unsafe = [sp for sp in storage_scope_paths(grants) if sp.per_user and not sp.prefix_safe]
    if not unsafe:
        return
    found = detect_xrootd_version()
    affected = xrootd_matches_prefixes(parse_xrootd_version(found))
    if affected is False:
        report.add("ok", "storage scopes", f"XRootD {found} here matches scope paths on path boundaries")
        return
    where = f"XRootD {found} (installed here)" if found else "XRootD before 5.6.9 (e.g. Debian 12's 5.5.3)"
    for sp in unsafe:
        report.add("warn", f"CasaTokenIssuer.grants['{sp.grant}']",
                   f"on {where} a token for {sp.shown('/', 'bob')} ({sp.scope}) also reads {sp.shown('/', 'bobby')}: "
                   "configure such servers with `casa-hub site-config xrootd --prefix-safe` or add a fixed "
                   "component after {username}")


def check_spawner(app: Any, report: Report, online: bool) -> None:
    spawner_class = report.guard("JupyterHub.spawner_class", lambda: app.spawner_class)
    if spawner_class is None:
        return
    from casa_hub.spawner.mixin import CasaSpawnerMixin

    if not issubclass(spawner_class, CasaSpawnerMixin):
        report.add("warn", "JupyterHub.spawner_class",
                   f"{spawner_class.__name__} is not a casa spawner: notebooks get no facility tokens")
        return
    report.add("ok", "JupyterHub.spawner_class", spawner_class.__name__)
    mixin = report.guard("CasaSpawnerMixin", lambda: CasaSpawnerMixin(config=app.config))
    if mixin is None:
        return
    for cls in mixin.integration_classes:
        integration = report.guard(cls.__name__, lambda cls=cls: cls(parent=mixin))
        if integration is None or not integration.enabled:
            continue
        problem = getattr(integration, "configuration_problem", lambda: None)()
        if problem:
            report.add("error", f"integration {integration.name}", f"{problem} (notebooks would get no "
                       f"{integration.name} settings)")
            continue
        endpoints = [v for k, v in integration.trait_values().items()
                     if isinstance(v, str) and v and ("endpoint" in k or k.endswith("_url") or k == "url")
                     and "://" in v]
        report.add("ok", f"integration {integration.name}", ", ".join(endpoints) or "enabled")
        if online:
            for endpoint in endpoints:
                reason = _tcp_reachable(endpoint)
                if reason:
                    report.add("warn", f"integration {integration.name}", f"{endpoint} unreachable: {reason}")


def run_checks(config_file: str, online: bool = True) -> Report:
    """Load ``config_file`` as the hub would and validate every casa_hub setting."""
    report = Report()
    if not Path(config_file).is_file():
        report.add("error", "config", f"{config_file} does not exist")
        return report
    try:
        app = load_hub(config_file)
    except Exception as e:  # a config file can raise anything; say what and where
        report.add("error", "config", f"{config_file} failed to load: {type(e).__name__}: {e}")
        return report
    report.add("ok", "config", f"loaded {config_file}")
    for step in (check_auth, check_issuer, check_storage_prefixes, check_spawner):
        step(app, report, online)
    return report


# ---- the ``casa-hub check`` command -------------------------------------------------------------

HELP = "validate a hub configuration and the services it names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the hub's jupyterhub_config.py (drop-in files it loads are included)")
    parser.add_argument("--offline", action="store_true", help="do not contact the provider, issuer or services")


def run(args: argparse.Namespace) -> int:
    report = run_checks(args.config, online=not args.offline)
    for finding in report.findings:
        print(finding)
    errors = sum(f.level == "error" for f in report.findings)
    warnings = sum(f.level == "warn" for f in report.findings)
    print(f"{'FAILED' if errors else 'OK'}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
