"""Facility tokens kept in a user's encrypted auth_state.

``auth_state["casa_tokens"]`` maps grant name to ``{"token", "exp", "iat", "jti", "scope", "aud"}``.
Tokens are reused while enough of their lifetime remains, otherwise minted afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from casa_hub.tokens.issuer import CasaTokenIssuer, MintedToken

AUTH_STATE_KEY = "casa_tokens"
#: the authenticator's bookkeeping in auth_state (no secrets): access token expiry, refresh state
META_KEY = "casa_oidc"
#: the provider's tokens in auth_state (dropped when a session ends; never leave the hub)
PROVIDER_TOKEN_KEYS = ("access_token", "refresh_token", "id_token", "token_response")

_locks: dict[str, asyncio.Lock] = {}


def auth_state_lock(username: str) -> asyncio.Lock:
    """One lock per user for read-modify-write of auth_state in the hub process.

    The broker and the provider refresh both update auth_state; without the lock one could save
    a copy read before the other's write and bring back a spent rotating refresh token."""
    lock = _locks.get(username)
    if lock is None:
        lock = _locks[username] = asyncio.Lock()
    return lock


def login_required(auth_state: dict | None) -> bool:
    """Whether the provider refresh failed for good: no new tokens until the user signs in again."""
    return bool(auth_state and (auth_state.get(META_KEY) or {}).get("login_required"))


def store_minted(auth_state: dict, minted: Iterable[MintedToken], now: float | None = None) -> None:
    """Record freshly minted tokens in ``auth_state`` (in place)."""
    tokens = auth_state.setdefault(AUTH_STATE_KEY, {})
    for m in minted:
        tokens[m.grant] = {
            "token": m.token,
            "exp": m.claims["exp"],
            "iat": m.claims["iat"],
            "jti": m.claims["jti"],
            "scope": m.claims["scope"],
            "aud": m.claims["aud"],
        }


def is_fresh(entry: dict[str, Any], min_remaining_fraction: float, now: float) -> bool:
    """Whether a stored token has at least ``min_remaining_fraction`` of its lifetime left."""
    lifetime = entry["exp"] - entry["iat"]
    return lifetime > 0 and (entry["exp"] - now) >= min_remaining_fraction * lifetime


def fresh_tokens(
    issuer: CasaTokenIssuer,
    username: str,
    groups: Iterable[str],
    grants: Iterable[str],
    auth_state: dict | None,
    min_remaining_fraction: float = 0.5,
    now: float | None = None,
) -> tuple[dict[str, str], bool]:
    """Tokens for ``grants`` the user may have, reusing stored ones that are fresh enough.

    Returns ``({grant: token}, changed)``; ``changed`` tells whether auth_state was updated
    and should be saved. Grants the user's groups do not allow are left out.
    """
    now = time.time() if now is None else now
    groups = list(groups)
    allowed = set(issuer.grants_for(groups))
    stored = (auth_state or {}).get(AUTH_STATE_KEY, {})
    result: dict[str, str] = {}
    minted: list[MintedToken] = []
    for grant in grants:
        if grant not in allowed:
            continue
        entry = stored.get(grant)
        if entry and is_fresh(entry, min_remaining_fraction, now):
            result[grant] = entry["token"]
            continue
        token = issuer.mint(username, grant, groups, now=now)
        minted.append(token)
        result[grant] = token.token
    if minted and auth_state is not None:
        store_minted(auth_state, minted, now)
    return result, bool(minted)
