"""The facility token issuer: WLCG Common JWT Profile tokens for a user's grants.

One issuer lives in the hub process (``CasaTokenIssuer.instance``); keys are parsed once when it is
first used. Every mint writes one audit line (user, grant, jti, scopes, expiry), never the token.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from traitlets import (
    Dict,
    Enum,
    Float,
    Instance,
    Integer,
    List,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets.config import SingletonConfigurable

from casa_hub.metrics import count_mint
from casa_hub.tokens.grants import (
    MAX_LIFETIME,
    Grant,
    GrantConfigError,
    check_username,
    parse_grants,
)
from casa_hub.tokens.keyring import KeyRing, fingerprint, load_keyring
from casa_hub.tokens.keys import SUPPORTED_ALGORITHMS, KeyError_, SigningKey, write_new_key
from casa_hub.tokens.ledger import MintLedger

#: claims set afresh at every mint (``explain`` shows them by name, never by value)
PER_MINT_CLAIMS = ("iat", "nbf", "exp", "jti")


class IssuerError(RuntimeError):
    """The issuer cannot mint: a user may not have a grant, or the issuer is misconfigured."""


@dataclass(frozen=True)
class MintedToken:
    """A freshly signed token and the claims it carries (safe to log, the token is not)."""

    grant: str
    token: str
    claims: dict[str, Any]

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])

    def describe(self) -> dict[str, Any]:
        """Everything about the token except its value."""
        return {
            "grant": self.grant,
            "audience": self.claims["aud"],
            "scope": self.claims["scope"],
            "jti": self.claims["jti"],
            "expires_at": self.expires_at,
        }


class CasaTokenIssuer(SingletonConfigurable):
    """Signs short-lived, least-privilege tokens for the facility's services."""

    issuer_url = Unicode(
        "",
        config=True,
        help="""The issuer URL (``iss``) of facility tokens, e.g. ``https://hub.example.org/hub/casa-issuer``.

        Services fetch ``<issuer_url>/.well-known/openid-configuration`` and its ``jwks_uri`` to verify
        tokens, so this must be the public URL under which the hub serves ``/hub/casa-issuer``.
        XRootD and HTCondor require https.
        """,
    )

    key_dir = Unicode(
        "",
        config=True,
        help="""Directory of PEM private keys (e.g. a mounted Kubernetes Secret). Files ``*.pem``.
        Without a ``keyring.json`` manifest the first by name signs and all are published; with one
        (written by ``casa-hub keys``) the manifest says which key signs, which next key is
        published ahead of signing, and which retired keys stay published until their tokens expire.
        The directory is re-read when it changes (see ``key_reload_interval``).""",
    )

    key_reload_interval = Float(
        30.0,
        config=True,
        help="""Seconds between checks of ``key_dir`` for rotated keys (a changed Secret or manifest).
        A directory that fails to load is reported in the log and the previous keys stay in use.""",
    )

    key_files = List(
        Unicode(),
        config=True,
        help="""PEM private key files; used instead of ``key_dir`` when set. The first signs,
        all are published in the JWKS.""",
    )

    generate_key_if_missing = Enum(
        ["", *SUPPORTED_ALGORITHMS],
        "",
        config=True,
        help="""If set (``ES256`` or ``RS256``) and ``key_dir`` holds no key, create one there.
        Meant for demos and single-machine installs; production keys come from a Secret.""",
    )

    grants = Dict(
        config=True,
        help="""The tokens users can receive, by grant name. Each value is a dict with
        ``audience`` (str), ``scopes`` (list of templates; ``{username}`` is replaced),
        ``lifetime`` (seconds, default 1200, at most 21600) and ``groups`` (list; omit for all users).
        Example: ``{"xcache": {"audience": "https://xcache.example.org",
        "scopes": ["storage.read:/user/{username}"], "groups": ["cms"]}}``.""",
    )

    default_groups_claim = Unicode(
        "wlcg.groups",
        config=True,
        help="""Claim carrying the user's facility groups in minted tokens (WLCG profile:
        ``wlcg.groups``). Set to an empty string to leave groups out of tokens.""",
    )

    broker_rate_per_minute = Integer(
        30,
        config=True,
        help="""Token broker calls each user may make per minute on average (all grants together).""",
    )

    broker_burst = Integer(
        10,
        config=True,
        help="""Token broker calls a user may make in a burst before the per-minute rate applies.""",
    )

    @validate("grants")
    def _validate_grants(self, proposal: Any) -> dict[str, Any]:
        try:
            parse_grants(proposal["value"], setting="CasaTokenIssuer.grants")
        except GrantConfigError as e:
            raise GrantConfigError(str(e)) from None
        return proposal["value"]

    @default("log")
    def _log_default(self) -> logging.Logger:
        # the hub passes its own logger (``instance(log=...)``); audit lines go to ``<log>.audit``
        return logging.getLogger("casa_hub.tokens")

    #: the newest mint of each user and grant, public facts only (shown by "My facility")
    ledger = Instance(MintLedger, args=())

    _ring: KeyRing | None = None
    _ring_fingerprint: tuple[Any, ...] | None = None
    _ring_checked_at: float = 0.0
    _parsed_grants: dict[str, Grant] | None = None

    @observe("grants")
    def _grants_changed(self, change: Any) -> None:
        self._parsed_grants = None

    # ---- configuration --------------------------------------------------------------------------

    @property
    def parsed_grants(self) -> dict[str, Grant]:
        """The validated grants, parsed once per change of ``grants``."""
        if self._parsed_grants is None:
            self._parsed_grants = parse_grants(self.grants, setting="CasaTokenIssuer.grants")
        return self._parsed_grants

    @property
    def max_lifetime(self) -> int:
        """The longest lifetime of any grant: how long a retired key must stay published."""
        return max((g.lifetime for g in self.parsed_grants.values()), default=MAX_LIFETIME)

    @property
    def keyring(self) -> KeyRing:
        """The keys by role, parsed on first use and re-read when ``key_dir`` changes."""
        now = time.monotonic()
        if self._ring is not None and (self.key_files or now - self._ring_checked_at < self.key_reload_interval):
            return self._ring
        self._ring_checked_at = now
        if self.key_files:
            keys = [SigningKey.from_pem_file(p) for p in self.key_files]
            self._ring = KeyRing(keys[0], keys, {keys[0].kid: "signing"})
            return self._ring
        self._reload_key_dir()
        assert self._ring is not None
        return self._ring

    def _reload_key_dir(self) -> None:
        if not self.key_dir:
            raise IssuerError("CasaTokenIssuer.key_dir or CasaTokenIssuer.key_files must be set")
        directory = Path(self.key_dir)
        if self.generate_key_if_missing and not list(directory.glob("*.pem")):
            key = write_new_key(directory / "signing-key-1.pem", self.generate_key_if_missing)
            self.log.info("Created facility signing key %s (kid %s)", key.source, key.kid)
        if not directory.is_dir():
            raise IssuerError(f"signing key directory {directory} does not exist (CasaTokenIssuer.key_dir)")
        fp = fingerprint(directory)
        ring = self._ring
        if ring is not None and fp == self._ring_fingerprint and time.time() < ring.changes_at:
            return
        try:
            new = load_keyring(directory, self.max_lifetime)
        except KeyError_ as e:
            if ring is None:
                raise IssuerError(f"CasaTokenIssuer.key_dir: {e}") from None
            self.log.error("Keeping the current signing keys: %s", e)
            self._ring_fingerprint = fp  # report once per change, not on every check
            return
        self._ring, self._ring_fingerprint = new, fp
        if ring is None or [k.kid for k in ring.published] != [k.kid for k in new.published] \
                or ring.signing.kid != new.signing.kid:
            self.log.info("Facility keys: %s", ", ".join(
                f"{d['kid'][:12]} {d['role']}" for d in new.describe()))
        for name in new.expired_files:
            self.log.info("Retired key %s is no longer published; its file may be removed "
                          "(`casa-hub keys prune`)", name)

    @property
    def keys(self) -> list[SigningKey]:
        """The published keys (signing, next and retiring)."""
        return self.keyring.published

    def check_config(self) -> None:
        """Raise IssuerError naming the bad setting; call at hub start."""
        if not self.issuer_url.startswith(("https://", "http://")):
            raise IssuerError(
                f"CasaTokenIssuer.issuer_url must be an http(s) URL, got {self.issuer_url!r}"
            )
        self.parsed_grants  # noqa: B018 - raises GrantConfigError
        self.keys  # noqa: B018 - raises on unreadable keys

    @property
    def signing_key(self) -> SigningKey:
        return self.keyring.signing

    # ---- publication ----------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The public keys, as served at ``jwks_uri``."""
        return {"keys": [k.public_jwk for k in self.keys]}

    def discovery(self) -> dict[str, Any]:
        """The document served at ``<issuer>/.well-known/openid-configuration``."""
        base = self.issuer_url.rstrip("/")
        return {
            "issuer": base,
            "jwks_uri": f"{base}/jwks.json",
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            "scopes_supported": sorted(
                {s.split(":")[0] for g in self.parsed_grants.values() for s in g.scopes}
            ),
        }

    # ---- minting --------------------------------------------------------------------------------

    def grants_for(self, groups: Iterable[str]) -> list[str]:
        """Names of the grants a member of ``groups`` may receive."""
        groups = set(groups)
        return [name for name, g in self.parsed_grants.items() if g.allows(groups)]

    def mint(
        self, username: str, grant_name: str, groups: Iterable[str] = (), *, now: float | None = None
    ) -> MintedToken:
        """Sign a token of grant ``grant_name`` for ``username``.

        Raises IssuerError if the grant does not exist or the user's groups do not allow it,
        and UnsafeUsername if the username cannot be placed in a scope path.
        """
        check_username(username)
        groups = sorted(set(groups))
        grant = self.parsed_grants.get(grant_name)
        if grant is None:
            raise IssuerError(f"no grant named {grant_name!r}")
        if not grant.allows(groups):
            raise IssuerError(f"user {username!r} may not receive grant {grant_name!r}")
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer_url.rstrip("/"),
            "sub": username,
            "aud": grant.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + grant.lifetime,
            "jti": str(uuid.uuid4()),
            "wlcg.ver": "1.0",
            "scope": grant.render_scopes(username),
        }
        if self.default_groups_claim and groups:
            claims[self.default_groups_claim] = [f"/{g}" for g in groups]
        key = self.signing_key
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"}
        )
        count_mint(grant_name, grant.lifetime)
        self.log.getChild("audit").info(
            "mint user=%s grant=%s jti=%s scope=%r aud=%s exp=%d",
            username,
            grant_name,
            claims["jti"],
            claims["scope"],
            grant.audience,
            claims["exp"],
        )
        self.ledger.record(username, grant_name, claims)  # the newest mint's public facts (casa_hub.tokens.ledger)
        return MintedToken(grant_name, token, claims)

    def mint_all(self, username: str, groups: Iterable[str] = ()) -> dict[str, MintedToken]:
        """Mint every grant the user's groups allow."""
        groups = list(groups)
        return {name: self.mint(username, name, groups) for name in self.grants_for(groups)}
