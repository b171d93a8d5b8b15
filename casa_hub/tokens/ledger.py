"""What the hub remembers about mints without a database write: the newest token of each user and
grant (public facts only), and which users' sign-ins have ended.

The broker mints on every renewal of every server; writing auth_state for each (encrypt, UPDATE,
COMMIT) made a token cost several times the hub's own cheapest API call. Instead:

- :class:`MintLedger` (``CasaTokenIssuer.ledger``) keeps, per user and grant, the newest mint's ``jti``, ``iat``, ``exp``, ``scope``
  and ``aud`` in memory (the issuer records every mint: login, refresh, spawn, broker); the "My
  facility" page shows the newer of it and auth_state's copy. The values are bounded (one entry per
  user and grant) and never a token;
- :class:`SessionGate` caches whether a user's sign-in has ended (``login_required`` in auth_state),
  so the broker decrypts auth_state once per user and hub process, not per call. Every writer of
  ``login_required`` (refresh, logout) and every login updates it.

auth_state is still written where something durable changes: at login, at a provider refresh, at a
spawn that minted, when a session ends. After a hub restart both start empty and fill from auth_state.
"""

from __future__ import annotations

import threading
from typing import Any

#: the public facts of a mint kept in memory and shown on the "My facility" page
PUBLIC_KEYS = ("jti", "iat", "exp", "scope", "aud")


class MintLedger:
    """The newest mint per (user, grant), public facts only."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def record(self, username: str, grant: str, claims: dict[str, Any]) -> None:
        entry = {k: claims[k] for k in PUBLIC_KEYS if k in claims}
        with self._lock:
            current = self._entries.get((username, grant))
            if current is None or entry.get("iat", 0) >= current.get("iat", 0):
                self._entries[(username, grant)] = entry

    def newest(self, username: str) -> dict[str, dict[str, Any]]:
        """``{grant: entry}`` of ``username``'s newest mints."""
        with self._lock:
            return {g: dict(e) for (u, g), e in self._entries.items() if u == username}

    def forget(self, username: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == username]:
                del self._entries[key]


class SessionGate:
    """Whether each user's sign-in has ended (``None``: not known in this process yet)."""

    def __init__(self) -> None:
        self._ended: dict[str, bool] = {}

    def ended(self, username: str) -> bool | None:
        return self._ended.get(username)

    def mark(self, username: str, ended: bool) -> None:
        self._ended[username] = ended


#: one per hub process (the issuer, which owns its ``MintLedger``, is one per process too)
SESSIONS = SessionGate()


def newer_entries(stored: dict[str, dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per grant, whichever of auth_state's entry and the ledger's is newer (by ``iat``)."""
    out = dict(stored)
    for grant, entry in recorded.items():
        if grant not in out or entry.get("iat", 0) > (out[grant] or {}).get("iat", 0):
            out[grant] = entry
    return out
