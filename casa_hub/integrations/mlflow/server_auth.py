"""The MLflow server side: an ``authorization_function`` for MLflow's auth app that accepts facility tokens.

MLflow's auth app (``mlflow server --app-name basic-auth``) calls the function named in its auth ini
for every protected request, inside Flask's request context, and expects a
``werkzeug.datastructures.Authorization`` whose ``username`` is an MLflow user, or a Flask
``Response`` that it sends back as is. This module's ``authenticate_request``:

- takes ``Authorization: Bearer <token>`` and verifies the token with ``FacilityTokenVerifier``
  (signature against the issuer's published keys, issuer, audience, expiry, not-before, and an
  optional required scope), then applies ``casa_hub.tokens.claims_policy`` with this server's
  ``max_lifetime`` and ``leeway`` (also when the verifier was given to ``FacilityTokenAuth`` ready-made):
  ``kid`` present and published, no ``crit`` header, only ES256/RS256; ``exp``, ``iat`` and ``nbf``
  present and integers; ``exp - iat`` at most ``max_lifetime`` (+ ``leeway``); ``exp`` not past and
  ``iat``/``nbf`` not future by more than ``leeway``;
- answers 401 with ``WWW-Authenticate: Bearer`` for no token and for a foreign, forged, expired or
  wrong-audience token, and 403 when a required scope is missing; neither the answer nor the log
  ever contains the token;
- maps the token's ``sub`` (the hub username) to the MLflow user of that name, creating it on first
  use with an unusable random password; MLflow's permissions (``default_permission``, per-experiment
  grants, MANAGE on what the user creates) then apply as for any MLflow user. With ``admin_groups``
  set, members of those groups (the token's ``wlcg.groups``) are MLflow admins and nobody else is.

Settings, read once at the first request, from environment variables or else from a ``[casa_hub]``
section of the same auth ini (``MLFLOW_AUTH_CONFIG_PATH``):

=============================== ================== =====================================================
env var                         ini key            meaning
=============================== ================== =====================================================
``CASA_MLFLOW_ISSUER``          ``issuer``         the facility issuer URL (``iss``); required
``CASA_MLFLOW_AUDIENCE``        ``audience``       accepted audience(s), space- or comma-separated; required
``CASA_MLFLOW_REQUIRED_SCOPE``  ``required_scope`` a scope every token must carry, e.g. ``mlflow.write``
``CASA_MLFLOW_ADMIN_GROUPS``    ``admin_groups``   groups whose members are MLflow admins
``CASA_MLFLOW_MAX_LIFETIME``    ``max_lifetime``   longest accepted token lifetime ``exp - iat`` in seconds,
                                                   1 to 21600; default 21600 (6 h, the WLCG profile's maximum)
``CASA_MLFLOW_LEEWAY``          ``leeway``         clock difference tolerated for ``exp``/``iat``/``nbf`` and the
                                                   lifetime, in seconds, 0 to 300; default 30
=============================== ================== =====================================================
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flask import Response, g, make_response, request
from werkzeug.datastructures import Authorization

from casa_hub.tokens.claims_policy import (
    DEFAULT_LEEWAY,
    DEFAULT_MAX_LIFETIME,
    check_settings,
    check_token_times_and_header,
    read_header,
)
from casa_hub.tokens.grants import UnsafeUsername, check_username
from casa_hub.tokens.verifier import FacilityTokenVerifier, TokenRejected

# under "mlflow" so that the MLflow server's own logging configuration shows these lines
log = logging.getLogger("mlflow.server.auth.casa_hub")

SETTINGS = {  # setting -> env var; the ini key is the setting's name
    "issuer": "CASA_MLFLOW_ISSUER",
    "audience": "CASA_MLFLOW_AUDIENCE",
    "required_scope": "CASA_MLFLOW_REQUIRED_SCOPE",
    "admin_groups": "CASA_MLFLOW_ADMIN_GROUPS",
    "max_lifetime": "CASA_MLFLOW_MAX_LIFETIME",
    "leeway": "CASA_MLFLOW_LEEWAY",
}
INI_SECTION = "casa_hub"
_SCOPE = re.compile(r"[A-Za-z0-9_.-]+(:/[^\s:]*)?")  # ``name`` or ``name:/path``
REALM = "mlflow"


class ConfigError(RuntimeError):
    """The server's casa_hub settings are missing or wrong; the message names the setting."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.replace(",", " ").split() if v)


@dataclass(frozen=True)
class ServerAuthSettings:
    issuer: str
    audiences: tuple[str, ...]
    required_scope: str | None = None
    admin_groups: frozenset[str] | None = None
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    leeway: int = DEFAULT_LEEWAY

    def __post_init__(self) -> None:
        try:
            check_settings(self.max_lifetime, self.leeway)
        except ValueError as e:
            name = str(e).partition(":")[0]
            raise ConfigError(f"casa_hub MLflow auth: {e} (set {SETTINGS.get(name, name)} or `{name}` in the "
                              f"[{INI_SECTION}] section of the auth ini)") from None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, ini_path: str | None = None) -> ServerAuthSettings:
        """Settings from the environment, else from the ``[casa_hub]`` section of the auth ini."""
        env = os.environ if environ is None else environ
        ini_path = ini_path if ini_path is not None else env.get("MLFLOW_AUTH_CONFIG_PATH")
        section: Mapping[str, str] = {}
        if ini_path:
            parser = configparser.ConfigParser()
            parser.read(ini_path)
            if parser.has_section(INI_SECTION):
                section = parser[INI_SECTION]
        values = {name: (env.get(var) or section.get(name) or "").strip() for name, var in SETTINGS.items()}
        for name in ("issuer", "audience"):
            if not values[name]:
                raise ConfigError(
                    f"casa_hub MLflow auth: set {SETTINGS[name]} (or `{name}` in the [{INI_SECTION}] "
                    "section of the auth ini)"
                )
        scope = values["required_scope"]
        if scope and not _SCOPE.fullmatch(scope):
            raise ConfigError(f"casa_hub MLflow auth: required_scope {scope!r} must be `name` or `name:/path`")
        groups = frozenset(g.strip("/") for g in _split(values["admin_groups"])) or None
        seconds = {}
        for name, default in (("max_lifetime", DEFAULT_MAX_LIFETIME), ("leeway", DEFAULT_LEEWAY)):
            value = values[name]
            if not value:
                seconds[name] = default
            elif not value.isascii() or not value.isdigit():
                raise ConfigError(f"casa_hub MLflow auth: {name} ({SETTINGS[name]}) must be a whole number "
                                  f"of seconds, got {value!r}")
            else:
                seconds[name] = int(value)
        return cls(values["issuer"], _split(values["audience"]), scope or None, groups,
                   seconds["max_lifetime"], seconds["leeway"])


class UserStore(Protocol):
    """The part of MLflow's auth store this module uses."""

    def has_user(self, username: str) -> bool: ...
    def create_user(self, username: str, password: str, is_admin: bool = False) -> Any: ...
    def get_user(self, username: str) -> Any: ...
    def update_user(self, username: str, password: str | None = None, is_admin: bool | None = None) -> Any: ...


def _mlflow_store() -> UserStore:
    from mlflow.server.auth import store

    return store


def _reserved_usernames() -> set[str]:
    from mlflow.server.auth import auth_config

    return {auth_config.admin_username} if auth_config.admin_username else set()


class FacilityTokenAuth:
    """Turns a request's bearer token into an MLflow user, or into a refusal."""

    def __init__(self, settings: ServerAuthSettings, verifier: FacilityTokenVerifier | None = None,
                 store: UserStore | None = None, reserved: set[str] | None = None) -> None:
        self.settings = settings
        self.verifier = verifier or FacilityTokenVerifier(
            settings.issuer, settings.audiences, max_lifetime=settings.max_lifetime, leeway=settings.leeway)
        self._store = store
        self._reserved = reserved
        self._lock = threading.Lock()

    @property
    def store(self) -> UserStore:
        if self._store is None:
            self._store = _mlflow_store()
        return self._store

    @property
    def reserved(self) -> set[str]:
        if self._reserved is None:
            self._reserved = _reserved_usernames()
        return self._reserved

    def authenticate(self, header: str | None, path: str = "") -> Authorization | Response:
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return refusal(401, None, "A facility token is required: send Authorization: Bearer <token>.")
        try:
            claims = self._verify(token.strip())
        except TokenRejected as e:
            log.warning("refused a facility token for %s: %s", path or "a request", e.reason)
            status = 403 if e.reason == "insufficient_scope" else 401
            error = "insufficient_scope" if status == 403 else "invalid_token"
            return refusal(status, error, f"The facility token was refused ({e.reason}): {e}")
        username = claims.get("sub")
        try:
            check_username(username)
        except UnsafeUsername:
            log.warning("refused a facility token for %s: unusable sub", path or "a request")
            return refusal(403, "invalid_token", "The token's subject is not a usable MLflow username.")
        if username in self.reserved:
            log.warning("refused a facility token for %s: sub %s is MLflow's own admin account", path, username)
            return refusal(403, "invalid_token", "The token's subject is a reserved MLflow account.")
        self._sync_user(username, claims)
        return Authorization("bearer", {"username": username})

    def _verify(self, token: str) -> dict[str, Any]:
        scope = self.settings.required_scope
        if not scope:
            claims = self.verifier.verify(token)
        else:
            authz, _, scope_path = scope.partition(":")
            claims = self.verifier.authorize(token, authz, scope_path or None)
        # this server's header and time policy, whatever verifier was given (the signature is verified)
        check_token_times_and_header(read_header(token), claims, known_kids=self.verifier.known_kids,
                                     max_lifetime=self.settings.max_lifetime, leeway=self.settings.leeway)
        return claims

    def _sync_user(self, username: str, claims: Mapping[str, Any]) -> None:
        """Create the MLflow user on first sight; keep ``is_admin`` in step with ``admin_groups``."""
        store = self.store
        if not store.has_user(username):
            with self._lock:
                try:
                    store.create_user(username, secrets.token_urlsafe(32))  # a password nobody knows
                    log.info("created MLflow user %s for its first facility token", username)
                except Exception:  # created meanwhile by another request or worker
                    if not store.has_user(username):
                        raise
        admin_groups = self.settings.admin_groups
        if admin_groups is not None:
            groups = {g.strip("/") for g in claims.get("wlcg.groups") or () if isinstance(g, str)}
            is_admin = bool(groups & admin_groups)
            if store.get_user(username).is_admin != is_admin:
                store.update_user(username, is_admin=is_admin)
                log.info("MLflow user %s is %san admin now (admin_groups)", username, "" if is_admin else "not ")


def refusal(status: int, error: str | None, message: str) -> Response:
    """A 401/403 answer in the style of RFC 6750 (no token in it)."""
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    response = make_response(message + "\n", status)
    response.headers["WWW-Authenticate"] = challenge
    response.mimetype = "text/plain"
    return response


_auth: FacilityTokenAuth | None = None
_auth_lock = threading.Lock()


def get_auth() -> FacilityTokenAuth:
    """The process's FacilityTokenAuth, built from the settings on first use."""
    global _auth
    with _auth_lock:
        if _auth is None:
            _auth = FacilityTokenAuth(ServerAuthSettings.load())
            log.info(
                "accepting facility tokens of %s for audience(s) %s%s", _auth.settings.issuer,
                ", ".join(_auth.settings.audiences),
                f" with scope {_auth.settings.required_scope}" if _auth.settings.required_scope else "",
            )
        return _auth


def authenticate_request() -> Authorization | Response:
    """MLflow ``authorization_function``: the MLflow user of the request's facility token, or a refusal.

    MLflow may call it several times for one request (before the request, and after it to grant
    MANAGE on a new experiment); the first result is kept for the rest of the request."""
    cached = g.get("casa_hub_auth")
    if cached is not None:
        return cached
    try:
        result: Authorization | Response = get_auth().authenticate(request.headers.get("Authorization"), request.path)
    except ConfigError as e:
        log.error("%s", e)
        result = make_response("MLflow authentication is not configured; see the server log.\n", 500)
    g.casa_hub_auth = result
    return result
