"""The one policy for a facility token's JOSE header and time claims, shared by every service-side check.

``FacilityTokenVerifier`` (``casa_hub.tokens.verifier``) and the MLflow server auth plugin
(``casa_hub.integrations.mlflow.server_auth``) both call ``check_token_times_and_header`` (or its two halves,
``check_header`` before the key is looked up and ``check_times`` once the signature is verified), so both
apply the same rules (each with its own ``max_lifetime`` and ``leeway``):

- header: ``alg`` is one of ``ALLOWED_ALGORITHMS`` (asymmetric only); there is no ``crit`` (we understand no
  JWS extensions, so any critical one must be refused, RFC 7515 §4.1.11); ``kid`` is a non-empty string and,
  when the caller passes the issuer's key ids, one of them;
- ``exp``, ``iat`` and ``nbf`` are present and JSON integers (not floats such as ``1.0e9``, not strings, not
  booleans);
- the lifetime ``exp - iat`` is at most ``max_lifetime`` (default 6 h, the WLCG Common JWT
  Profile's maximum and the issuer's ``MAX_LIFETIME``) plus ``leeway``;
- ``exp`` is not in the past, and ``iat`` and ``nbf`` are not in the future, each by more than ``leeway``
  seconds of clock difference (default 30 s);
- ``exp`` is after ``iat``.

Every refusal is a ``TokenRejected`` whose ``reason`` is a short label; neither it nor the message ever
contains the token or a claim value.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Container, Mapping
from typing import Any

from casa_hub.tokens.grants import MAX_LIFETIME

#: algorithms facility tokens may use (the issuer signs with ES256 or RS256)
ALLOWED_ALGORITHMS = ("ES256", "RS256")
#: the longest lifetime (``exp - iat``) accepted by default: the WLCG profile's and the issuer's maximum
DEFAULT_MAX_LIFETIME = MAX_LIFETIME
#: seconds of clock difference between issuer and service tolerated by default
DEFAULT_LEEWAY = 30
#: the largest ``leeway`` a service may configure
MAX_LEEWAY = 300
#: the time claims every facility token carries, as integers
TIME_CLAIMS = ("exp", "iat", "nbf")


class TokenRejected(Exception):
    """A token is refused. ``reason`` is a short label; ``str()`` explains it to a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_settings(max_lifetime: Any, leeway: Any) -> tuple[int, int]:
    """``(max_lifetime, leeway)`` if usable, else ValueError naming the setting."""
    if isinstance(max_lifetime, bool) or not isinstance(max_lifetime, int) \
            or not 0 < max_lifetime <= MAX_LIFETIME:
        raise ValueError(f"max_lifetime: a whole number of seconds from 1 to {MAX_LIFETIME} (6 hours), "
                         f"got {max_lifetime!r}")
    if isinstance(leeway, bool) or not isinstance(leeway, int) or not 0 <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway: a whole number of seconds from 0 to {MAX_LEEWAY}, got {leeway!r}")
    return max_lifetime, leeway


def read_header(token: str) -> dict[str, Any]:
    """The unverified JOSE header of a compact JWS, without judging its parameters (``check_header`` does)."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed", "the token's header is not valid JSON") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed", "the token's header is not a JSON object")
    return header


def check_header(header: Mapping[str, Any], known_kids: Container[str] | None = None) -> str:
    """The header's ``kid`` if the header is acceptable, else TokenRejected.

    With ``known_kids`` (the key ids the issuer publishes) an unknown ``kid`` is refused here; without it
    the caller looks the key up itself."""
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        shown = alg if isinstance(alg, str) and len(alg) <= 16 else type(alg).__name__
        raise TokenRejected("disallowed_alg", f"algorithm {shown!r} is not allowed; use one of {ALLOWED_ALGORITHMS}")
    if "crit" in header:
        raise TokenRejected("unsupported_crit",
                            "the token's header has a crit parameter; no critical extensions are understood")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenRejected("missing_kid", "the token's header has no key id (kid)")
    if known_kids is not None and kid not in known_kids:
        raise TokenRejected("unknown_kid", "the token's key id is not published by its issuer")
    return kid


def is_expired(exp: int, now: float, leeway: int) -> bool:
    return exp <= now - leeway


def is_in_future(when: int, now: float, leeway: int) -> bool:
    return when > now + leeway


def check_times(
    claims: Mapping[str, Any],
    *,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    leeway: int = DEFAULT_LEEWAY,
    now: float | None = None,
) -> None:
    """TokenRejected unless ``exp``, ``iat`` and ``nbf`` are integers describing a current token of an
    acceptable lifetime (see the module's docstring)."""
    missing = [c for c in TIME_CLAIMS if c not in claims]
    if missing:
        raise TokenRejected("missing_claim", f"the token lacks the claim(s) {missing}")
    for claim in TIME_CLAIMS:
        value = claims[claim]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TokenRejected("invalid_time_claim",
                                f"the token's {claim} is a {type(value).__name__}, not an integer (NumericDate)")
    exp, iat, nbf = (claims[c] for c in TIME_CLAIMS)
    if exp - iat > max_lifetime + leeway:
        raise TokenRejected("lifetime_too_long",
                            f"the token's lifetime (exp - iat) is longer than the maximum of {max_lifetime} s")
    now = time.time() if now is None else now
    if is_expired(exp, now, leeway):
        raise TokenRejected("expired", "the token has expired")
    if is_in_future(iat, now, leeway):
        raise TokenRejected("not_yet_valid", "the token was issued in the future (iat)")
    if is_in_future(nbf, now, leeway):
        raise TokenRejected("not_yet_valid", "the token is not valid yet (nbf)")
    if exp <= iat:  # after the clock checks, whose reasons say more when they apply too
        raise TokenRejected("invalid_time_claim", "the token's exp is not after its iat")


def check_token_times_and_header(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    *,
    known_kids: Container[str] | None = None,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    leeway: int = DEFAULT_LEEWAY,
    now: float | None = None,
) -> None:
    """``check_header`` and ``check_times`` together, for a token whose signature is already verified."""
    check_settings(max_lifetime, leeway)
    check_header(header, known_kids)
    check_times(claims, max_lifetime=max_lifetime, leeway=leeway, now=now)
