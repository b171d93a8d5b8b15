"""Verifying facility tokens in a service (an MLflow auth plugin, a web app, a script).

``FacilityTokenVerifier`` checks a token the way XRootD's SciTokens plugin does, with the
``scitokens`` library: the JOSE header (``alg``, ``kid``, no ``crit``), the signature against the issuer's
published keys (discovery document → ``jwks_uri``, cached, fetched again when a token names an unknown
``kid``, at most once per ``min_refetch_interval``), the time claims (integer ``exp``, ``iat`` and ``nbf``,
lifetime at most ``max_lifetime``, current within ``leeway``; ``casa_hub.tokens.claims_policy``, the rules
the MLflow plugin applies too), then ``iss``, ``aud`` and the scopes (``scitokens.Enforcer``). Every refusal
is one exception type, ``TokenRejected``, whose ``reason`` is a short label and whose message says what is
wrong; neither ever contains the token.

    verifier = FacilityTokenVerifier("https://hub.example.org/hub/casa-issuer", audience="mlflow")
    claims = verifier.verify(token)                          # or raises TokenRejected
    verifier.test(token, "read", "/user/alice")              # scope decision, True/False
    verifier.authorize(token, "read", "/user/alice/data")    # claims, or TokenRejected(insufficient_scope)
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import jwt
import requests
import scitokens
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from scitokens.scitokens import InvalidAuthorizationResource, ValidationFailure

from casa_hub.tokens.claims_policy import (
    ALLOWED_ALGORITHMS,
    DEFAULT_LEEWAY,
    DEFAULT_MAX_LIFETIME,
    TokenRejected,
    check_header,
    check_settings,
    check_times,
    is_expired,
    is_in_future,
    read_header,
)

__all__ = [
    "ALLOWED_ALGORITHMS", "AUTHZ_ALIASES", "MAX_TOKEN_BYTES", "REASONS", "REQUIRED_CLAIMS",
    "FacilityTokenVerifier", "TokenRejected", "fetch_json", "url_allowed",
]

log = logging.getLogger("casa_hub.tokens.verifier")

#: tokens longer than this are refused before any parsing
MAX_TOKEN_BYTES = 16 * 1024
#: claims every facility token carries (WLCG Common JWT Profile)
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope")
#: what ``test(token, authz, path)`` accepts in a token's scope for a SciTokens-style ``authz``
AUTHZ_ALIASES = {
    "read": ("read", "storage.read"),
    "write": ("write", "storage.modify", "storage.create"),
}
#: the ``reason`` labels of TokenRejected
REASONS = (
    "too_large", "malformed", "disallowed_alg", "unsupported_crit", "missing_kid", "unknown_kid",
    "keys_unavailable", "bad_signature", "missing_claim", "invalid_time_claim", "lifetime_too_long", "expired",
    "not_yet_valid", "wrong_issuer", "wrong_audience", "invalid_claims", "invalid_scope", "insufficient_scope",
)
#: pyjwt checks left to ``claims_policy`` (time claims, with leeway) and to ``_verify`` (iss, aud)
_DECODE_OPTIONS = {"verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                   "verify_aud": False, "verify_iss": False}

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_DOCUMENT_BYTES = 1024 * 1024


def url_allowed(url: str, allow_insecure_http: bool = False) -> bool:
    """https, or http to a loopback host (or any host when ``allow_insecure_http``)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if allow_insecure_http or parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def fetch_json(url: str, timeout: float = 10.0) -> Any:
    """GET a JSON document (no redirects, at most 1 MiB)."""
    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True,
                      headers={"Accept": "application/json"}) as r:
        r.raise_for_status()
        body = r.raw.read(_MAX_DOCUMENT_BYTES + 1, decode_content=True)
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} returned more than {_MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)


def _public_key(jwk: Mapping[str, Any]) -> tuple[str, PublicKey]:
    """(alg, public key) of a published JWK; ValueError if it is not a usable signing key."""
    if jwk.get("use", "sig") != "sig":
        raise ValueError("not a signing key")
    key = jwt.PyJWK(dict(jwk)).key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        alg = "ES256"
    elif isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        alg = "RS256"
    else:
        raise ValueError("only EC P-256 and RSA (2048 bits or more) keys are accepted")
    if jwk.get("alg", alg) != alg:
        raise ValueError(f"key says alg {jwk.get('alg')!r} but is a {alg} key")
    return alg, key


class _Enforcer(scitokens.Enforcer):
    """``scitokens.Enforcer`` with the time rules of ``claims_policy`` (integers, ``leeway``) instead of its own."""

    def __init__(self, issuer: str, audience: list[str], leeway: int) -> None:
        self.leeway = leeway
        super().__init__(issuer, audience=audience)

    def _validate_exp(self, value: Any) -> bool:
        return _is_int(value) and not is_expired(value, self._now, self.leeway)

    def _validate_nbf(self, value: Any) -> bool:
        return _is_int(value) and not is_in_future(value, self._now, self.leeway)

    def _validate_iat(self, value: Any) -> bool:
        return _is_int(value) and not is_in_future(value, self._now, self.leeway)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FacilityTokenVerifier:
    """Verifies facility tokens of one issuer for one service (audience).

    ``issuer``: the issuer URL (``iss``), e.g. ``https://hub.example.org/hub/casa-issuer``.
    ``audience``: the audience (or audiences) this service accepts.
    ``jwks``: a fixed key set instead of fetching it (offline use, tests).
    ``fetch``: ``url -> parsed JSON`` used for discovery and JWKS (default: ``fetch_json``).
    ``allow_insecure_http``: accept http URLs for hosts other than loopback (never in production).
    ``cache_seconds``: keys are fetched again after this long (the issuer serves max-age 300).
    ``min_refetch_interval``: at most one fetch per this many seconds, whatever tokens arrive.
    ``extra_claims``: further claim names to accept without checking (scitokens refuses unknown claims).
    ``max_lifetime``: the longest ``exp - iat`` accepted, in seconds (default and upper bound 21600, 6 h:
    the WLCG profile's maximum and the issuer's).
    ``leeway``: seconds of clock difference tolerated for ``exp``, ``iat``, ``nbf`` and the lifetime
    (default 30, at most 300).
    """

    def __init__(
        self,
        issuer: str,
        audience: str | Iterable[str],
        *,
        jwks: Mapping[str, Any] | None = None,
        fetch: Callable[[str], Any] | None = None,
        allow_insecure_http: bool = False,
        cache_seconds: float = 300.0,
        min_refetch_interval: float = 30.0,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        extra_claims: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        leeway: int = DEFAULT_LEEWAY,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        if jwks is None and not url_allowed(self.issuer, allow_insecure_http):
            raise ValueError(
                f"issuer {self.issuer!r} must be an https URL (http only for loopback, "
                "or with allow_insecure_http=True)"
            )
        self.audiences = [audience] if isinstance(audience, str) else list(audience)
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError("audience: one or more non-empty strings")
        self.allow_insecure_http = allow_insecure_http
        self.fetch = fetch or fetch_json
        self.cache_seconds = cache_seconds
        self.min_refetch_interval = min_refetch_interval
        self.max_token_bytes = max_token_bytes
        self.extra_claims = tuple(extra_claims)
        self.clock = clock
        self.max_lifetime, self.leeway = check_settings(max_lifetime, leeway)
        self.fetch_count = 0
        self._keys: dict[str, tuple[str, PublicKey]] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._static = jwks is not None
        self._lock = threading.Lock()
        if jwks is not None:
            self._keys = self._parse_jwks(jwks)

    # ---- keys -----------------------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def known_kids(self) -> frozenset[str]:
        """The key ids of the issuer's keys known now (without fetching)."""
        return frozenset(self._keys)

    def _parse_jwks(self, doc: Any) -> dict[str, tuple[str, PublicKey]]:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            raise ValueError("the JWKS document has no 'keys' list")
        keys = {}
        for jwk in doc["keys"]:
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            if not isinstance(kid, str) or not kid:
                continue
            try:
                keys[kid] = _public_key(jwk)
            except (ValueError, jwt.PyJWKError) as e:
                log.warning("ignoring key %s published by %s: %s", kid, self.issuer, e)
        return keys

    def _download_keys(self) -> dict[str, tuple[str, PublicKey]]:
        self.fetch_count += 1
        discovery = self.fetch(self.discovery_url)
        if not isinstance(discovery, Mapping) or str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
            raise ValueError(f"the discovery document at {self.discovery_url} names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not url_allowed(jwks_uri, self.allow_insecure_http):
            raise ValueError(f"the discovery document's jwks_uri {jwks_uri!r} is not an allowed URL")
        return self._parse_jwks(self.fetch(jwks_uri))

    def refresh_keys(self, force: bool = False) -> bool:
        """Fetch the issuer's keys unless that was tried less than ``min_refetch_interval`` ago.

        Returns whether a fetch succeeded. Failures keep the keys already known."""
        if self._static:
            return False
        with self._lock:
            now = self.clock()
            if not force and self._attempted_at is not None and now - self._attempted_at < self.min_refetch_interval:
                return False
            self._attempted_at = now
            try:
                keys = self._download_keys()
            except Exception as e:  # any failure to fetch means "no new keys", never a crash
                log.warning("cannot fetch the keys of issuer %s: %s: %s", self.issuer, type(e).__name__, e)
                return False
            self._keys, self._fetched_at = keys, now
            return True

    def _key_for(self, kid: str) -> tuple[str, PublicKey]:
        if not self._static:
            stale = self._fetched_at is None or self.clock() - self._fetched_at >= self.cache_seconds
            if stale or kid not in self._keys:
                self.refresh_keys()
            if self._fetched_at is None:
                raise TokenRejected("keys_unavailable", f"cannot fetch the keys of issuer {self.issuer}")
        if kid not in self._keys:
            raise TokenRejected("unknown_kid", f"the token's key id is not published by {self.issuer}")
        return self._keys[kid]

    # ---- verification ---------------------------------------------------------------------------

    def _enforcer(self) -> scitokens.Enforcer:
        enforcer = _Enforcer(self.issuer, self.audiences, self.leeway)
        enforcer.add_validator("wlcg.ver", lambda v: v == "1.0")
        enforcer.add_validator("wlcg.groups", lambda v: isinstance(v, list) and all(isinstance(g, str) for g in v))
        for claim in self.extra_claims:
            enforcer.add_validator(claim, lambda v: True)
        return enforcer

    def _parse(self, token: str | bytes) -> scitokens.SciToken:
        if not isinstance(token, str | bytes):
            raise TokenRejected("malformed", "a token must be a string")
        if len(token) > self.max_token_bytes:
            raise TokenRejected("too_large", f"the token is longer than {self.max_token_bytes} bytes")
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise TokenRejected("malformed", "the token is not ASCII") from None
        token = token.strip()
        if not _JWT_SHAPE.fullmatch(token):
            raise TokenRejected("malformed", "the token is not a JWT (three base64url parts)")
        header = read_header(token)
        kid = check_header(header)  # alg, crit, kid: before any key is looked up or fetched
        alg = header["alg"]
        key_alg, key = self._key_for(kid)
        if key_alg != alg:
            raise TokenRejected("disallowed_alg", f"the token says {alg} but its key is a {key_alg} key")
        try:
            claims = jwt.decode(token, key, algorithms=[key_alg], options=_DECODE_OPTIONS)
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature", "the token's signature does not match its key") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected("disallowed_alg", "the token's algorithm is not allowed") from None
        except (jwt.InvalidTokenError, ValueError):
            raise TokenRejected("malformed", "the token's payload cannot be read") from None
        check_times(claims, max_lifetime=self.max_lifetime, leeway=self.leeway)
        # what scitokens.SciToken.deserialize builds after its own jwt.decode, which has no leeway
        parsed = scitokens.SciToken(algorithm=key_alg, key_id=kid)
        parsed._verified_claims = claims
        parsed._serialized_token = token
        return parsed

    def _verify(self, token: str | bytes) -> scitokens.SciToken:
        parsed = self._parse(token)
        claims = dict(parsed.claims())
        missing = [c for c in REQUIRED_CLAIMS if c not in claims]
        if missing:
            raise TokenRejected("missing_claim", f"the token lacks the claim(s) {missing}")
        if claims["iss"] != self.issuer:
            raise TokenRejected("wrong_issuer", f"the token was not issued by {self.issuer}")
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not set(self.audiences).intersection(a for a in aud if isinstance(a, str)):
            raise TokenRejected("wrong_audience", f"the token is not meant for {self.audiences}")
        try:
            self._enforcer().generate_acls(parsed)
        except InvalidAuthorizationResource as e:
            raise TokenRejected("invalid_scope", f"the token's scope is invalid: {e}") from None
        except ValidationFailure as e:
            raise TokenRejected("invalid_claims", f"the token's claims are not acceptable: {e}") from None
        return parsed

    def verify(self, token: str | bytes) -> dict[str, Any]:
        """The token's claims if it is genuine, current and meant for this service; else TokenRejected."""
        return dict(self._verify(token).claims())

    def test(self, token: str | bytes, authz: str, path: str | None = None) -> bool:
        """Whether a genuine ``token`` allows ``authz`` on ``path`` (SciTokens semantics: a scope's path
        covers itself and everything below it). ``read``/``write`` also match WLCG ``storage.*`` scopes.
        Raises TokenRejected for a token that does not verify."""
        return self._allows(self._verify(token), authz, path)

    def authorize(self, token: str | bytes, authz: str, path: str | None = None) -> dict[str, Any]:
        """The claims if ``token`` allows ``authz`` on ``path``, else TokenRejected(``insufficient_scope``)."""
        parsed = self._verify(token)
        if not self._allows(parsed, authz, path):
            where = f" on {path}" if path else ""
            raise TokenRejected("insufficient_scope", f"the token does not allow {authz}{where}")
        return dict(parsed.claims())

    def _allows(self, parsed: scitokens.SciToken, authz: str, path: str | None) -> bool:
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path must be absolute, got {path!r}")
        if path is None and authz in AUTHZ_ALIASES:
            raise ValueError(f"{authz!r} needs a path")
        enforcer = self._enforcer()
        return any(enforcer.test(parsed, name, path) for name in AUTHZ_ALIASES.get(authz, (authz,)))
