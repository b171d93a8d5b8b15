"""OpenID Connect client helpers: provider discovery, JWKS cache, ID token verification."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import jwt
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("casa_hub.auth.oidc")

ALLOWED_ID_TOKEN_ALGS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class OIDCError(Exception):
    """A login cannot complete. ``reason`` is a short label for metrics; ``str()`` is for people."""

    def __init__(self, message: str, reason: str = "oidc_error") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""
    revocation_endpoint: str = ""

    @classmethod
    def from_document(cls, expected_issuer: str, doc: dict[str, Any]) -> ProviderMetadata:
        issuer = doc.get("issuer", "")
        if issuer.rstrip("/") != expected_issuer.rstrip("/"):
            raise OIDCError(
                f"the provider's discovery document names issuer {issuer!r}, "
                f"not the configured {expected_issuer!r}",
                "discovery",
            )
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not doc.get(k)]
        if missing:
            raise OIDCError(f"the provider's discovery document lacks {missing}", "discovery")
        return cls(
            issuer=issuer,
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=doc["jwks_uri"],
            userinfo_endpoint=doc.get("userinfo_endpoint", ""),
            end_session_endpoint=doc.get("end_session_endpoint", ""),
            revocation_endpoint=doc.get("revocation_endpoint", ""),
        )


async def fetch_json(url: str, timeout: float = 10.0, validate_cert: bool = True) -> Any:
    req = HTTPRequest(
        url,
        headers={"Accept": "application/json"},
        request_timeout=timeout,
        connect_timeout=timeout,
        validate_cert=validate_cert,
    )
    resp = await AsyncHTTPClient().fetch(req)
    return json.loads(resp.body.decode("utf-8"))


async def discover(
    issuer: str,
    *,
    attempts: int = 10,
    first_delay: float = 0.5,
    max_delay: float = 15.0,
    validate_cert: bool = True,
) -> ProviderMetadata:
    """Fetch ``<issuer>/.well-known/openid-configuration``, retrying with backoff."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            doc = await fetch_json(url, validate_cert=validate_cert)
            return ProviderMetadata.from_document(issuer, doc)
        except OIDCError:
            raise
        except (OSError, HTTPClientError, ValueError) as e:
            if attempt == attempts:
                raise OIDCError(
                    f"the identity provider at {issuer} is unreachable ({e}); try again later",
                    "provider_unreachable",
                ) from None
            log.warning(
                "OIDC discovery at %s failed (%s); attempt %d/%d, retrying in %.1fs",
                url, e, attempt, attempts, delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")


class JWKSCache:
    """The provider's signing keys, fetched once and refetched when an unknown ``kid`` appears."""

    def __init__(self, jwks_uri: str, validate_cert: bool = True, min_refetch_interval: float = 30.0):
        self.jwks_uri = jwks_uri
        self.validate_cert = validate_cert
        self.min_refetch_interval = min_refetch_interval
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            if self._keys and time.monotonic() - self._fetched_at < self.min_refetch_interval:
                return
            doc = await fetch_json(self.jwks_uri, validate_cert=self.validate_cert)
            keys = {}
            for entry in doc.get("keys", []):
                if entry.get("use", "sig") != "sig" or "kid" not in entry:
                    continue
                try:
                    keys[entry["kid"]] = jwt.PyJWK(entry)
                except jwt.PyJWKError:
                    log.warning("ignoring unusable key %s from %s", entry.get("kid"), self.jwks_uri)
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def get(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            try:
                await self._refresh()
            except (OSError, HTTPClientError, ValueError) as e:
                raise OIDCError(
                    f"cannot fetch the identity provider's keys ({e})", "provider_unreachable"
                ) from None
        if kid not in self._keys:
            raise OIDCError("the ID token is signed with a key the provider does not publish", "bad_id_token")
        return self._keys[kid]


async def verify_id_token(
    id_token: str,
    *,
    jwks: JWKSCache,
    issuer: str,
    client_id: str,
    nonce: str | None,
    leeway: float = 30.0,
    max_age: float = 600.0,
) -> dict[str, Any]:
    """Verify an ID token per OIDC Core 3.1.3.7 and return its claims.

    Checks the signature against the provider's JWKS, ``iss``, ``aud`` (and ``azp`` when there are
    several audiences), ``exp``, ``iat`` (not in the future, not older than ``max_age``) and, when
    ``nonce`` is given, that the token carries exactly that nonce.
    """
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise OIDCError("the provider returned a malformed ID token", "bad_id_token") from None
    alg = header.get("alg")
    if alg not in ALLOWED_ID_TOKEN_ALGS:
        raise OIDCError(f"the ID token uses a disallowed algorithm {alg!r}", "bad_id_token")
    key = await jwks.get(header.get("kid", ""))
    try:
        claims = jwt.decode(
            id_token,
            key=key.key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise OIDCError("the ID token has expired; please sign in again", "bad_id_token") from None
    except jwt.PyJWTError as e:
        raise OIDCError(f"the ID token is invalid ({e})", "bad_id_token") from None
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
        raise OIDCError("the ID token was issued to another client (azp)", "bad_id_token")
    now = time.time()
    if claims["iat"] > now + leeway or claims["iat"] < now - max_age:
        raise OIDCError("the ID token's issue time is out of range", "bad_id_token")
    if nonce is not None and claims.get("nonce") != nonce:
        raise OIDCError("the ID token does not answer this login (nonce mismatch)", "bad_id_token")
    return claims
