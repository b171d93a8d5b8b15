"""Keeping a signed-in user's provider tokens and facility tokens fresh (``refresh_user``).

* The provider's access token is refreshed with the refresh token shortly before it expires
  (``refresh_margin``), once per user at a time: concurrent requests and named servers wait for the
  same refresh, so a rotating refresh token is never used twice.
* Each refresh re-mints the user's facility tokens and hands them to the user's running servers.
* Provider down, failing or slow: the session and the facility tokens are kept (re-minted as
  usual) for ``provider_outage_grace`` after the access token expired (bounded by the refresh
  token's expiry when known); the refresh is retried ``refresh_retry_interval`` after the end of
  each failed attempt. Afterwards a new login is required and the refresh token is revoked (best
  effort).
* A refresh that timed out after the provider received it may have spent the rotating refresh
  token (the provider answered, the answer was lost): that token is never sent again, since a
  provider that detects its reuse revokes the whole grant. The session lives on within the grace;
  then a new login is required. Connection failures (nothing was sent) are retried as usual.
* Refresh token rejected (revoked, expired): a new login is required at once, and the token broker
  stops issuing tokens to the user's servers until then.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from casa_hub import metrics
from casa_hub.auth.contract import OIDCAuthenticatorLike
from casa_hub.auth.identity import IDENTITY_KEY, IdentityConflict, check_refresh
from casa_hub.auth.oidc import OIDCError, verify_id_token
from casa_hub.auth.provider_http import revoke_refresh_token
from casa_hub.tokens.ledger import SESSIONS
from casa_hub.tokens.store import (
    AUTH_STATE_KEY,
    META_KEY,
    PROVIDER_TOKEN_KEYS,
    auth_state_lock,
    login_required,
    store_minted,
)


class ProviderUnavailable(Exception):
    """The provider could not be reached or failed (5xx); worth retrying later. ``delivered``: the
    provider may have received (and processed) the request, so its refresh token may be spent."""

    def __init__(self, message: str, delivered: bool = False) -> None:
        super().__init__(message)
        self.delivered = delivered


class RefreshRejected(Exception):
    """The provider refused the refresh token (revoked or expired); a new login is needed."""


def provider_meta(token_info: dict, now: float, generation: int) -> dict[str, Any]:
    """Bookkeeping stored beside the provider's tokens: when the access token expires."""
    expires_in = token_info.get("expires_in")
    try:
        expires_at = int(now + float(expires_in)) if expires_in is not None else None
    except (TypeError, ValueError):
        expires_at = None
    meta: dict[str, Any] = {"access_expires_at": expires_at, "refreshed_at": int(now), "generation": generation}
    try:  # Keycloak and others say how long the refresh token lives
        refresh_in = float(token_info.get("refresh_expires_in") or 0)
    except (TypeError, ValueError):
        refresh_in = 0
    if refresh_in > 0:
        meta["refresh_expires_at"] = int(now + refresh_in)
    return meta


def without_auth_state(model: dict[str, Any]) -> dict[str, Any]:
    """The model for JupyterHub without auth_state: it is saved already, under the user's lock.
    JupyterHub then reads the current auth_state right before it saves the model, instead of
    saving this copy later and bringing back a spent refresh token over a newer write."""
    return {k: v for k, v in model.items() if k != "auth_state"}


def grace_ends(meta: dict[str, Any], access_expires_at: float, grace: float) -> float:
    """Until when a session outlives a provider outage: ``grace`` after the access token expired,
    but never past the refresh token's own expiry."""
    end = access_expires_at + max(0.0, grace)
    return min(end, meta["refresh_expires_at"]) if meta.get("refresh_expires_at") else end


class ProviderRefresher:
    """``refresh_user`` for CasaOIDCAuthenticator: single-flight per user."""

    def __init__(self, authenticator: OIDCAuthenticatorLike) -> None:
        self.auth = authenticator
        self.log = authenticator.log
        self._inflight: dict[str, asyncio.Task] = {}
        self._retry_at: dict[str, float] = {}

    async def refresh_user(self, user: Any) -> bool | dict:
        task = self._inflight.get(user.name)
        if task is None:
            task = asyncio.ensure_future(self._refresh(user))
            self._inflight[user.name] = task
            task.add_done_callback(lambda _t, name=user.name: self._inflight.pop(name, None))
        return await asyncio.shield(task)

    # ---- the decision ---------------------------------------------------------------------------

    async def _refresh(self, user: Any) -> bool | dict:
        async with auth_state_lock(user.name):
            state = await user.get_auth_state()
            if not state or login_required(state):
                return False
            meta = state.get(META_KEY) or {}
            now = time.time()
            expires_at = meta.get("access_expires_at")
            if expires_at is None or now < expires_at - self.auth.refresh_margin:
                return await self._refresh_facility_tokens(user, state, now)
            outage_end = grace_ends(meta, expires_at, self.auth.provider_outage_grace)
            if meta.get("refresh_uncertain") or now < self._retry_at.get(user.name, 0.0):
                # an uncertain refresh (never re-sent), or the provider failed a moment ago
                if now < outage_end:
                    return await self._refresh_facility_tokens(user, state, now)
                why = ("an earlier refresh timed out after the provider received it" if meta.get("refresh_uncertain")
                       else "the provider stayed unavailable")
                return await self._end_session(user, state, f"{why} past the outage grace")
            refresh_token = state.get("refresh_token")
            if not refresh_token:
                return now < expires_at or await self._require_login(user, state, "no refresh token")
            started = time.monotonic()
            try:
                model = await self._refresh_with_provider(user, state, refresh_token, now)
            except ProviderUnavailable as e:
                metrics.observe_refresh("provider_unavailable", time.monotonic() - started)
                self._retry_at[user.name] = time.time() + self.auth.refresh_retry_interval  # from the end
                if e.delivered:
                    state.setdefault(META_KEY, {})["refresh_uncertain"] = True
                    await user.save_auth_state(state)
                    self.log.warning("The refresh of %s's provider tokens timed out after the provider received "
                                     "it; its refresh token is not sent again", user.name)
                if now < outage_end:
                    self.log.warning(
                        "Cannot refresh %s's provider tokens (%s); their session and facility tokens are kept "
                        "until %s (outage grace) and the refresh is retried", user.name, e,
                        time.strftime("%H:%M:%S", time.localtime(outage_end)))
                    return await self._refresh_facility_tokens(user, state, time.time())
                return await self._end_session(user, state, f"provider unavailable ({e}) past the outage grace")
            except RefreshRejected as e:
                metrics.observe_refresh("rejected", time.monotonic() - started)
                return await self._require_login(user, state, str(e))
            metrics.observe_refresh("ok", time.monotonic() - started)
            self._retry_at.pop(user.name, None)
            return model

    async def _end_session(self, user: Any, state: dict, why: str) -> bool:
        """The session must end: revoke the refresh token the hub holds (best effort), then require login."""
        await revoke_refresh_token(self.auth, user.name, state.get("refresh_token"))
        return await self._require_login(user, state, why)

    async def _require_login(self, user: Any, state: dict, why: str) -> bool:
        self.log.warning("%s must sign in again: %s", user.name, why)
        for key in PROVIDER_TOKEN_KEYS:
            state.pop(key, None)
        state.setdefault(META_KEY, {})["login_required"] = True
        await user.save_auth_state(state)
        SESSIONS.mark(user.name, True)
        return False

    # ---- facility tokens only --------------------------------------------------------------------

    async def _refresh_facility_tokens(self, user: Any, state: dict, now: float) -> bool | dict:
        """Re-mint facility tokens that have used up more than half their lifetime."""
        issuer = self.auth.token_issuer
        groups = [g.name for g in user.groups]
        stored = state.get(AUTH_STATE_KEY, {})
        stale = [g for g in issuer.grants_for(groups)
                 if g not in stored or stored[g]["exp"] - now < 0.5 * (stored[g]["exp"] - stored[g]["iat"])]
        if not stale:
            return True
        minted = [issuer.mint(user.name, g, groups, now=now) for g in stale]
        store_minted(state, minted, now)
        await user.save_auth_state(state)
        await self._notify_servers(user, state)
        model: dict[str, Any] = {"name": user.name}
        if self.auth.manage_groups:  # JupyterHub requires groups in every model when it manages them
            model["groups"] = groups
        return model

    # ---- provider refresh -------------------------------------------------------------------------

    async def _token_request(self, refresh_token: str) -> dict:
        auth = self.auth
        body = urlencode({k: v for k, v in auth.build_refresh_token_request_params(refresh_token).items()
                          if v is not None})
        request = HTTPRequest(
            auth.token_url, method="POST", headers=auth.build_token_info_request_headers(), body=body,
            validate_cert=auth.validate_server_cert, request_timeout=auth.refresh_timeout,
            connect_timeout=auth.refresh_timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if 400 <= e.code < 500:
                raise RefreshRejected(f"the provider refused the refresh token (HTTP {e.code})") from None
            if e.code == 599:  # tornado: "Timeout while connecting" (nothing sent) or "Timeout during request"
                raise ProviderUnavailable(str(e), delivered="while connecting" not in str(e)) from None
            raise ProviderUnavailable(f"HTTP {e.code}") from None  # the provider answered: nothing spent
        except (ConnectionRefusedError, socket.gaierror) as e:
            raise ProviderUnavailable(type(e).__name__) from None  # nothing was sent
        except (TimeoutError, OSError) as e:
            raise ProviderUnavailable(type(e).__name__, delivered=True) from None
        try:
            token_info = json.loads(response.body)
        except ValueError:
            raise ProviderUnavailable("the token endpoint did not answer JSON") from None
        if "access_token" not in token_info:
            raise ProviderUnavailable("the token endpoint returned no access token")
        return token_info

    async def _refresh_with_provider(self, user: Any, state: dict, refresh_token: str, now: float) -> dict:
        auth = self.auth
        await auth.ensure_provider()
        token_info = await self._token_request(refresh_token)
        token_info.setdefault("refresh_token", refresh_token)
        user_info = dict(state.get(auth.user_auth_state_key) or {})
        if token_info.get("id_token"):
            try:
                claims = await verify_id_token(
                    token_info["id_token"], jwks=auth._jwks, issuer=auth._provider.issuer,
                    client_id=auth.client_id, nonce=None, leeway=auth.id_token_leeway,
                )
            except OIDCError as e:
                if e.reason == "provider_unreachable":
                    raise ProviderUnavailable(str(e)) from None
                raise RefreshRejected(f"the refreshed ID token is not acceptable: {e}") from None
            if user_info.get("sub") and claims["sub"] != user_info["sub"]:
                raise RefreshRejected("the refreshed ID token is for another subject")
            user_info.update(claims)
        user_info.update(await self._userinfo(token_info, str(user_info.get("sub") or "")))
        if auth.user_info_to_username(user_info) != user.name:
            raise RefreshRejected("the provider now reports another username")
        try:
            check_refresh(state, user_info)
        except IdentityConflict as e:
            raise RefreshRejected(str(e)) from None
        generation = int((state.get(META_KEY) or {}).get("generation", 0)) + 1
        new_state = auth.build_auth_state_dict(token_info, user_info)
        if inspect.isawaitable(new_state):
            new_state = await new_state
        new_state[META_KEY] = provider_meta(token_info, now, generation)
        if IDENTITY_KEY in state:
            new_state[IDENTITY_KEY] = state[IDENTITY_KEY]  # the binding outlives every refresh
        model: dict[str, Any] = {"name": user.name, "admin": True if user.name in auth.admin_users else None,
                                 "auth_state": new_state}
        model = await auth.update_auth_model(model)
        if auth.manage_groups:
            model = await auth._apply_managed_groups(model)  # the same steps as at login
        groups = sorted(await auth.get_user_groups(new_state))
        if not await auth.check_allowed(user.name, model):
            raise RefreshRejected("the account is no longer in an allowed group")
        minted = auth.token_issuer.mint_all(user.name, groups)
        store_minted(new_state, minted.values(), now)
        await user.save_auth_state(new_state)
        self.log.info("Refreshed %s's provider tokens (generation %d) and re-minted %s",
                      user.name, generation, ", ".join(sorted(minted)) or "no facility tokens")
        await self._notify_servers(user, new_state)
        return without_auth_state(model)

    async def _userinfo(self, token_info: dict, subject: str) -> dict:
        """userinfo with the new access token: groups that only userinfo holds are read again, so
        a user removed from a group at the provider loses what it allowed at this refresh."""
        try:
            return await self.auth.fetch_userinfo(token_info, subject)
        except ValueError as e:
            raise RefreshRejected(str(e)) from None
        except HTTPClientError as e:
            if 400 <= e.code < 500:
                raise RefreshRejected(f"the provider refused userinfo (HTTP {e.code})") from None
            raise ProviderUnavailable(f"userinfo: HTTP {e.code}") from None
        except (TimeoutError, OSError) as e:
            raise ProviderUnavailable(f"userinfo: {type(e).__name__}") from None

    async def _notify_servers(self, user: Any, state: dict) -> None:
        """Give running servers their new facility tokens (spawners that support it)."""
        tokens = {g: e["token"] for g, e in state.get(AUTH_STATE_KEY, {}).items()}
        for spawner in list(getattr(user, "spawners", {}).values()):
            update = getattr(spawner, "casa_update_tokens", None)
            if update is None or not getattr(spawner, "active", False):
                continue
            try:
                await update(tokens)
            except Exception:
                self.log.exception("Could not update %s's running server %r with new tokens",
                                   user.name, spawner.name)
