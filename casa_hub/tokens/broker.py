"""The token broker: a user's server or browser session obtains a fresh token for one of its grants.

``POST /hub/api/casa/tokens/<grant>`` mints a token for the *calling* user only (there is no user in
the URL, so nobody can ask for another user's token) and never returns the IdP's tokens. The caller
needs the custom scope ``custom:casa-tokens:renew`` for itself, which ``enable_broker`` gives to the
``user`` role (browser sessions) and to servers' ``JUPYTERHUB_API_TOKEN``. Calls are rate limited per
user; every mint is audited by the issuer.

``GET /hub/api/casa/tokens`` lists the grants the caller may receive (audience, scopes, lifetime),
never token values.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.user import User
from tornado import web

from casa_hub.tokens.grants import UnsafeUsername
from casa_hub.tokens.issuer import CasaTokenIssuer
from casa_hub.tokens.ledger import SESSIONS
from casa_hub.tokens.store import login_required

RENEW_SCOPE = "custom:casa-tokens:renew"


def enable_broker(c: Any) -> None:
    """Hub configuration that lets users' sessions and servers call the broker (least privilege:
    only for themselves). Call from jupyterhub_config.py with the config object ``c``."""
    hub = c.JupyterHub
    scopes = dict(hub.custom_scopes) if "custom_scopes" in hub else {}
    scopes[RENEW_SCOPE] = {"description": "Obtain fresh facility tokens for oneself."}
    hub.custom_scopes = scopes
    roles = list(hub.load_roles) if "load_roles" in hub else []
    roles = [r for r in roles if r.get("name") != "user"]
    roles.append({"name": "user", "scopes": ["self", f"{RENEW_SCOPE}!user"]})
    hub.load_roles = roles
    # JupyterHub's own `server` role scopes, plus renewing the server owner's facility tokens
    existing = c.Spawner.server_token_scopes if "server_token_scopes" in c.Spawner else None
    renew = f"{RENEW_SCOPE}!user"
    if callable(existing):
        c.Spawner.server_token_scopes = lambda spawner: [*existing(spawner), renew]
    else:
        scopes = list(existing or ["users:activity!user", "access:servers!server"])
        c.Spawner.server_token_scopes = scopes if renew in scopes else [*scopes, renew]


class RateLimiter:
    """A token bucket per user: ``per_minute`` calls a minute on average, bursts up to ``burst``."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str, now: float | None = None) -> float:
        """0 if the call may proceed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0


class _BrokerBase(APIHandler):
    def initialize(self, issuer: CasaTokenIssuer, limiter: RateLimiter) -> None:
        self.issuer = issuer
        self.limiter = limiter

    def calling_user(self) -> User:
        user = self.current_user
        if not isinstance(user, User):
            raise web.HTTPError(403, "Facility tokens are issued to users only. If your sign-in has ended, "
                                     "sign in to the hub again.")
        if not self.has_scope(f"{RENEW_SCOPE}!user={user.name}"):
            raise web.HTTPError(
                403, f"This credential lacks the scope {RENEW_SCOPE} needed to obtain facility tokens."
            )
        return user

    def write_json(self, doc: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(doc))


class TokenListHandler(_BrokerBase):
    async def get(self) -> None:
        user = self.calling_user()
        groups = [g.name for g in user.groups]
        grants = self.issuer.parsed_grants
        self.write_json({
            "grants": [
                {"grant": name, "audience": grants[name].audience,
                 "scope": grants[name].render_scopes(user.name), "lifetime": grants[name].lifetime}
                for name in self.issuer.grants_for(groups)
            ]
        })


class TokenBrokerHandler(_BrokerBase):
    async def post(self, grant: str) -> None:
        user = self.calling_user()
        wait = self.limiter.acquire(user.name)
        if wait:
            self.log.warning("casa token broker: rate limit for %s (grant %s)", user.name, grant)
            error = web.HTTPError(429, "Too many token requests; retry later.")
            error.headers = {"Retry-After": str(max(1, int(wait + 0.999)))}  # kept by the hub's write_error
            raise error
        groups = [g.name for g in user.groups]
        if grant not in self.issuer.parsed_grants:
            raise web.HTTPError(404, f"No grant named {grant!r}.")
        if grant not in self.issuer.grants_for(groups):
            raise web.HTTPError(403, f"You may not receive {grant!r} tokens.")
        ended = SESSIONS.ended(user.name)
        if ended is None:  # first call in this hub process: read auth_state once (casa_hub.tokens.ledger)
            ended = login_required(await user.get_auth_state())
            SESSIONS.mark(user.name, ended)
        if ended:
            raise web.HTTPError(403, "Your sign-in has ended; sign in to the hub again to receive new tokens.")
        try:
            minted = self.issuer.mint(user.name, grant, groups)  # recorded in the ledger; no database write
        except UnsafeUsername as e:
            raise web.HTTPError(403, str(e)) from None
        await update_running_servers(user, {grant: minted.token}, self.log)
        doc = minted.describe()
        if self.get_argument("include_token", "1") != "0":  # "0": the page's renew button (the hub
            doc["token"] = minted.token                      # delivers it to the server; no value here)
        self.write_json(doc)


async def update_running_servers(user: Any, tokens: dict[str, str], log: Any) -> None:
    """Hand freshly minted tokens to the user's active servers (``casa_update_tokens``), so a
    server whose token directory is read-only (a Kubernetes Secret) gets them too. Best effort:
    a failure is logged (without token values) and the caller still gets its token."""
    for spawner in list(getattr(user, "spawners", {}).values()):
        update = getattr(spawner, "casa_update_tokens", None)
        if update is None or not spawner.active:
            continue
        try:
            await update(tokens)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            for token in tokens.values():
                reason = reason.replace(token, "[redacted]")
            log.warning("casa token broker: could not hand new %s token(s) to %s's server %r (%s)",
                        ", ".join(sorted(tokens)), user.name, spawner.name, reason)


def broker_handlers(issuer: CasaTokenIssuer) -> list[tuple[str, type, dict[str, Any]]]:
    """Handlers to add to the hub (paths relative to the hub prefix)."""
    kw = {"issuer": issuer, "limiter": RateLimiter(issuer.broker_rate_per_minute, issuer.broker_burst)}
    return [
        (r"/api/casa/tokens", TokenListHandler, kw),
        (r"/api/casa/tokens/([^/]+)", TokenBrokerHandler, kw),
    ]
