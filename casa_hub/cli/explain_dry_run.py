"""The dry run behind ``casa-hub explain``: what one user's server would get.

The hub configuration is loaded as the hub loads it (``casa_hub.cli.check.load_hub``) and the spawner is
built the way the hub builds it for a spawn, with a stand-in for the user. Then the spawner's own
code runs: the profile is chosen for the user's groups, ``casa_prepare`` obtains tokens and the
integrations' env vars and files (and the site's hooks run), and on Kubernetes
``get_pod_manifest`` and ``casa_create_secret`` build the pod and its Secret. What is *not* done:

- no token is signed with the facility's keys: the dry run's issuer signs with a throwaway key
  (so the claims and file sizes are the real ones), writes no audit line, and no token is printed;
- integrations' ``prepare`` steps (e.g. creating the user's Dask cluster) are skipped;
- no file is written, no Kubernetes API server is contacted, nothing is sent anywhere.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from jupyterhub.objects import Server
from jupyterhub.utils import url_path_join
from tornado import web

from casa_hub.integrations.base import Integration, SpawnContext
from casa_hub.spawner.kube_delivery import KubeSecretDelivery
from casa_hub.spawner.kube_secret import scrub
from casa_hub.spawner.mixin import CasaSpawnerMixin
from casa_hub.spawner.profiles import CasaProfiles
from casa_hub.tokens.grants import UnsafeUsername, check_username
from casa_hub.tokens.issuer import PER_MINT_CLAIMS, CasaTokenIssuer, IssuerError, MintedToken
from casa_hub.tokens.keyring import KeyRing
from casa_hub.tokens.keys import KeyError_, SigningKey, generate_private_key_pem

#: JWT-shaped strings; a last safeguard on everything printed
JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")
#: the local spawner writes token and config files 0600 in 0700 directories
LOCAL_FILE_MODE = 0o600


class ExplainError(Exception):
    """The dry run cannot be done (bad configuration, unknown group, ...); the message says why."""


class DryRunIssuer(CasaTokenIssuer):
    """The site's issuer settings with a throwaway signing key: claims as the hub would mint them,
    signatures nobody trusts. Keeps what it minted; writes no audit line (its logger is silent)."""

    minted: list[MintedToken]
    _throwaway: KeyRing

    @property
    def keyring(self) -> KeyRing:
        return self._throwaway

    def mint(self, username: str, grant_name: str, groups: Any = (), *, now: float | None = None) -> MintedToken:
        token = super().mint(username, grant_name, groups, now=now)
        self.minted.append(token)
        return token


def _quiet_logger(name: str, keep: list[logging.LogRecord] | None = None) -> logging.Logger:
    log = logging.getLogger(f"casa_hub.cli.explain.{name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers = [logging.NullHandler()]
    if keep is not None:
        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                keep.append(record)
        log.handlers.append(Keep(logging.WARNING))
    return log


def site_signing_key(config: Any) -> tuple[str, str | None, str | None]:
    """(alg, kid, why the kid is unknown) of the key the hub would sign with, read without
    creating anything (``generate_key_if_missing`` is ignored here)."""
    probe = CasaTokenIssuer(config=config, log=_quiet_logger("issuer"))
    probe.generate_key_if_missing = ""
    try:
        key = probe.signing_key
    except (IssuerError, KeyError_, OSError) as e:
        generated = CasaTokenIssuer(config=config).generate_key_if_missing
        if generated:
            return generated, None, f"the hub creates its {generated} key at start (generate_key_if_missing): {e}"
        return "ES256", None, f"the signing keys are not readable here ({e})"
    return key.alg, key.kid, None


def dry_run_issuer(config: Any, alg: str) -> DryRunIssuer:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = SigningKey.from_private_key(load_pem_private_key(generate_private_key_pem(alg), None), "dry-run")
    issuer = DryRunIssuer(config=config, log=_quiet_logger("dry-run-issuer"))
    issuer._throwaway = KeyRing(key, [key], {key.kid: "signing"})
    issuer.minted = []
    return issuer


class ExplainUser:
    """What a spawner uses of JupyterHub's User, for one dry run."""

    def __init__(self, name: str, groups: list[str], base_url: str) -> None:
        self.name = name
        self.escaped_name = quote(name, safe="@~")
        self.id = 0  # not known before the user exists in the hub's database
        self.groups = [SimpleNamespace(name=g) for g in groups]
        self.url = url_path_join(base_url, "user", self.escaped_name, "/")
        self.spawners: dict[str, Any] = {}
        self.auth_state: dict[str, Any] = {}

    async def get_auth_state(self) -> dict[str, Any]:
        return self.auth_state

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        self.auth_state = state


class _Created:
    status = 201

    def release(self) -> None:
        pass


class RecordingKubeAPI:
    """Stands in for KubeSpawner's Kubernetes client: keeps the Secret it would create, sends nothing."""

    def __init__(self) -> None:
        self.secrets: list[Any] = []

    async def create_namespaced_secret(self, namespace: str, body: Any, **_: Any) -> _Created:
        self.secrets.append(body)
        return _Created()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def refused(*_: Any, **__: Any) -> Any:
            raise ExplainError(f"the dry run does not contact the Kubernetes API (something called {name})")

        return refused


@contextmanager
def no_cluster(api: RecordingKubeAPI) -> Iterator[None]:
    """KubeSpawner loads the cluster's credentials and makes its API client when it is built; in a
    dry run it gets ``api`` instead and nothing is loaded."""
    import kubespawner.spawner as module

    saved = module.load_config, module.shared_client
    module.load_config = lambda **_: None
    module.shared_client = lambda *_, **__: api
    try:
        yield
    finally:
        module.load_config, module.shared_client = saved


def explain_class(cls: type) -> type:
    """``cls`` with the dry run's issuer, without ``prepare`` steps, delivering nowhere."""

    async def skipped(ctx: SpawnContext) -> None:
        return None

    class Explained(cls):  # type: ignore[misc, valid-type]
        casa_dry_issuer: DryRunIssuer
        casa_delivered: tuple[SpawnContext, dict[str, bytes]] | None = None

        @property
        def token_issuer(self) -> CasaTokenIssuer:
            return self.casa_dry_issuer

        @property
        def integrations(self) -> list[Integration]:
            made = super().integrations
            for integration in made:
                integration.prepare = skipped  # e.g. no Dask cluster is created
            return made

        async def casa_deliver(self, ctx: SpawnContext, files: dict[str, bytes]) -> None:
            self.casa_delivered = (ctx, dict(files))
            if isinstance(self, KubeSecretDelivery):  # keeps them in memory for the Secret
                await super().casa_deliver(ctx, files)

    Explained.__name__ = Explained.__qualname__ = cls.__name__
    return Explained


def _groups_known(app: Any, auth: Any, issuer: CasaTokenIssuer) -> set[str]:
    known = set(getattr(auth, "allowed_groups", set()) or ()) | set(getattr(auth, "admin_groups", set()) or ())
    for grant in issuer.parsed_grants.values():
        known |= set(grant.groups)
    for profile in CasaProfiles(config=app.config).parsed:
        known |= set(profile.groups)
    for role in app.config.JupyterHub.get("load_roles", []) or []:
        known |= set(role.get("groups", []))
    return known


async def _login(auth: Any, name: str, groups: list[str]) -> dict[str, Any]:
    """Whether the authenticator would let the user in, by its own ``check_allowed``."""
    allowed_groups = set(getattr(auth, "allowed_groups", ()) or ())
    admin = name in (auth.admin_users or set()) or bool(set(groups) & set(getattr(auth, "admin_groups", ()) or ()))
    model = {"name": name, "admin": admin, "groups": groups, "auth_state": {}}
    allowed = bool(await auth.check_allowed(name, model))
    kind = type(auth).__name__
    if admin:
        reason = "an admin (admin_users or admin_groups)"
    elif allowed and set(groups) & allowed_groups:
        reason = f"member of allowed group(s) {', '.join(sorted(set(groups) & allowed_groups))}"
    elif allowed:
        reason = f"allowed by {kind}'s rules"
    elif allowed_groups:
        reason = f"not in {kind}.allowed_groups ({', '.join(sorted(allowed_groups))}) nor an admin"
    else:
        reason = f"{kind} allows no one by these rules (allowed_users, allowed_groups, allow_all)"
    return {"allowed": allowed, "admin": admin, "reason": reason}


def _token_entry(minted: MintedToken, ctx: SpawnContext, alg: str, kid: str | None, mode: int) -> dict[str, Any]:
    claims = {k: v for k, v in minted.claims.items() if k not in PER_MINT_CLAIMS}
    return {
        "grant": minted.grant,
        "file": ctx.token_path(minted.grant),
        "header": {"alg": alg, "kid": kid or "(unknown here)", "typ": "JWT"},
        "claims": claims,
        "lifetime": int(minted.claims["exp"]) - int(minted.claims["iat"]),
        "set_at_each_mint": list(PER_MINT_CLAIMS),
        "size": len(minted.token),
        "mode": f"{mode:04o}",
    }


def _redacted_secret(secret: dict[str, Any]) -> dict[str, Any]:
    data = secret.get("data") or {}
    secret["data"] = {k: f"<redacted: {len(base64.b64decode(v))} bytes>" for k, v in data.items()}
    return secret


async def _kube_manifests(spawner: Any, api: RecordingKubeAPI) -> dict[str, Any]:
    from kubernetes_asyncio.client import ApiClient

    await spawner.load_user_options()  # KubeSpawner applies the chosen profile's overrides here
    pod = await spawner.get_pod_manifest()  # the Secret's mounts, casa_modify_pod, the leak check
    await spawner.casa_create_secret({"metadata": {"name": spawner.pod_name, "uid": "<uid of the pod>"}})
    async with ApiClient() as client:
        pod_doc = client.sanitize_for_serialization(pod)
        secret_doc = client.sanitize_for_serialization(api.secrets[-1]) if api.secrets else None
    return {"pod": pod_doc, "secret": _redacted_secret(secret_doc) if secret_doc else None}


@dataclass
class Site:
    """The loaded hub configuration, as the dry run uses it."""

    config_file: str
    app: Any
    spawner_class: type
    auth: Any
    issuer: DryRunIssuer
    alg: str
    kid: str | None
    notes: list[str] = field(default_factory=list)


def load_site(config_file: str, groups: list[str]) -> Site:
    """Load ``config_file`` as the hub would; check that it has a casa spawner and names ``groups``."""
    from casa_hub.cli.check import load_hub

    if not Path(config_file).is_file():
        raise ExplainError(f"{config_file} does not exist")
    try:
        app = load_hub(config_file)
        spawner_class = app.spawner_class
        auth_class = app.authenticator_class
        app.init_hub()
    except Exception as e:  # a config file can raise anything: say what and where
        raise ExplainError(f"{config_file} failed to load: {type(e).__name__}: {e}") from None
    if not issubclass(spawner_class, CasaSpawnerMixin):
        raise ExplainError(f"JupyterHub.spawner_class is {spawner_class.__name__}, not a casa spawner "
                           "(casa-local or casa-kube): its notebooks get no facility tokens")
    try:
        auth = auth_class(parent=app)
        alg, kid, kid_note = site_signing_key(app.config)
        issuer = dry_run_issuer(app.config, alg)
        issuer.check_config()
        known = _groups_known(app, auth, issuer)
    except (ValueError, IssuerError, TypeError) as e:
        raise ExplainError(f"{config_file}: {e}") from None
    unknown = [g for g in groups if g not in known]
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ExplainError(f"unknown group(s) {', '.join(unknown)}: {config_file} names them nowhere "
                           f"(allowed_groups, admin_groups, grants, profiles, roles); the groups it names: {listed}")
    return Site(config_file, app, spawner_class, auth, issuer, alg, kid,
                [f"kid unknown: {kid_note}"] if kid_note else [])


def build_spawner(site: Site, user: ExplainUser, profile: str | None, api_token: str,
                  records: list[logging.LogRecord]) -> Any:
    """The spawner, built as JupyterHub's ``User.spawn`` builds it (a Kubernetes one with no cluster)."""
    app = site.app
    kwargs: dict[str, Any] = dict(
        user=user, hub=app.hub, authenticator=site.auth, config=app.config,
        log=_quiet_logger("spawner", records), api_token=api_token,
        oauth_client_id=f"jupyterhub-user-{quote(user.name)}",
        user_options={"profile": profile} if profile else {},
    )
    if app.public_url:
        kwargs["public_url"] = url_path_join(app.public_url, user.url)
        kwargs["public_hub_url"] = url_path_join(app.public_url, app.hub.base_url)
    cls = explain_class(site.spawner_class)
    try:
        if issubclass(cls, KubeSecretDelivery):
            with no_cluster(RecordingKubeAPI()):
                spawner = cls(**kwargs)
        else:
            spawner = cls(**kwargs)
    except Exception as e:
        raise ExplainError(f"the spawner cannot be built from {site.config_file}: {type(e).__name__}: {e}") from None
    spawner.casa_dry_issuer = site.issuer
    spawner._server = Server(base_url=user.url)  # what JupyterHub records before it starts a server
    user.spawners[spawner.name] = spawner
    return spawner


def describe_delivery(doc: dict[str, Any], spawner: Any, site: Site) -> None:
    """Add what the prepared server gets (grants, tokens, env, files, integrations) to ``doc``."""
    assert spawner.casa_delivered is not None
    ctx, files = spawner.casa_delivered
    mode = getattr(spawner, "casa_secret_file_mode", LOCAL_FILE_MODE)
    delivered = {m.grant: m for m in site.issuer.minted}
    wanted = spawner.casa_grants()
    doc["token_dir"], doc["config_dir"] = ctx.token_dir, ctx.config_dir
    for name, entry in doc["grants"].items():
        entry["delivered"] = name in delivered
        entry["asked_for"] = name in wanted
    doc["tokens"] = [_token_entry(delivered[g], ctx, site.alg, site.kid, mode) for g in sorted(delivered)]
    doc["env"] = dict(sorted(spawner.casa_env.items()))
    doc["files"] = [{"path": t["file"], "size": t["size"], "mode": t["mode"], "holds": f"token of grant {t['grant']}"}
                    for t in doc["tokens"]]
    doc["files"] += [{"path": f"{ctx.config_dir}/{n}", "size": len(c), "mode": f"{mode:04o}", "holds": "config file"}
                     for n, c in sorted(files.items())]
    doc["integrations"] = []
    for integration in spawner.integrations:
        part = integration.contribute(ctx)
        doc["integrations"].append({
            "name": integration.name, "title": integration.title or integration.name,
            "grants": integration.grants(), "env": sorted(part.env), "files": sorted(part.files),
            "problem": getattr(integration, "configuration_problem", lambda: None)(),
            "prepare_skipped": type(integration).prepare is not Integration.prepare,
        })
    if not delivered:
        groups = ", ".join(doc["groups"]) or "none"
        doc["statement"] = (
            f"{doc['user']} (groups: {groups}) would get no facility tokens: the grants this server asks for "
            f"({', '.join(wanted)}) are not allowed for these groups" if wanted
            else f"{doc['user']}'s server asks for no grant (no integration needs one)")


async def explain(config_file: str, username: str, groups: list[str], profile: str | None = None) -> dict[str, Any]:
    """The dry run; returns the explanation as a JSON-able dict (no token value in it)."""
    try:
        check_username(username)
    except UnsafeUsername as e:
        raise ExplainError(f"--user {username!r}: {e}") from None
    site = load_site(config_file, groups)
    issuer = site.issuer
    doc: dict[str, Any] = {"config": config_file, "user": username, "groups": groups,
                           "spawner": site.spawner_class.__name__, "notes": site.notes}
    doc["login"] = await _login(site.auth, username, groups)
    allowed = set(issuer.grants_for(groups))
    doc["grants"] = {name: {"audience": g.audience, "lifetime": g.lifetime, "groups": sorted(g.groups),
                            "allowed": name in allowed} for name, g in issuer.parsed_grants.items()}
    if not doc["login"]["allowed"]:
        doc["statement"] = f"{username} would be refused at login: {doc['login']['reason']}; no tokens, no server."
        return doc

    records: list[logging.LogRecord] = []
    api_token = secrets.token_hex(16)  # stands for the server's fresh JupyterHub API token
    spawner = build_spawner(site, ExplainUser(username, groups, site.app.base_url), profile, api_token, records)
    try:  # as CasaSpawnerMixin.start: the profile for the user's groups, then casa_prepare
        chosen = spawner.casa_profiles.select(groups, spawner.user_options)
    except web.HTTPError as e:
        if e.status_code == 400:
            raise ExplainError(f"--profile: {e.log_message}") from None
        doc["statement"] = f"{username} would be refused at spawn: {e.log_message}"
        return doc
    doc["profile"] = {"slug": chosen.slug, "display_name": chosen.display_name} if chosen else None
    spawner.casa_profile = chosen
    spawner.casa_apply_profile(chosen)

    def secrets_seen() -> list[str]:
        return [m.token for m in issuer.minted] + [api_token]

    try:
        await spawner.casa_prepare()
        if isinstance(spawner, KubeSecretDelivery):
            doc.update(await _kube_manifests(spawner, spawner.api))
    except ExplainError:
        raise
    except Exception as e:
        message = getattr(e, "jupyterhub_message", None) or str(e)
        raise ExplainError(scrub(f"the spawn would fail: {type(e).__name__}: {message}", secrets_seen())) from None
    describe_delivery(doc, spawner, site)
    doc["notes"] += sorted({r.getMessage() for r in records})
    return redact(doc, secrets_seen())


def redact(doc: dict[str, Any], values: list[str]) -> dict[str, Any]:
    """``doc`` with every value in ``values`` (as it is or base64-encoded) and anything JWT-shaped
    replaced by ``[redacted]``."""
    text = scrub(json.dumps(doc), values)
    return json.loads(JWT_LIKE.sub("[redacted]", text))
