"""Logout: end the hub session, revoke the provider's refresh token, end the provider session.

``CasaLogoutHandler`` replaces oauthenticator's logout handler. ``GET /hub/logout`` only shows a
confirmation page; the logout itself is its form's ``POST``, which JupyterHub checks for its XSRF
token, so a cross-site link or page cannot sign a user out (and revoke their provider tokens). Before the hub clears its cookie it
revokes the user's refresh token at the provider's ``revocation_endpoint`` (RFC 7009) and forgets
the provider's tokens; afterwards it sends the browser to the provider's ``end_session_endpoint``
(OIDC RP-initiated logout) with ``client_id`` and ``post_logout_redirect_uri`` only: the ID token
is not put in a URL, where it would end up in logs and browser history.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from oauthenticator.oauth2 import OAuthLogoutHandler

from casa_hub.auth.contract import OIDCAuthenticatorLike
from casa_hub.auth.provider_http import revoke_refresh_token
from casa_hub.tokens.ledger import SESSIONS
from casa_hub.tokens.store import META_KEY, PROVIDER_TOKEN_KEYS, auth_state_lock


class CasaLogoutHandler(OAuthLogoutHandler):
    """Ends the hub session, revokes the provider's refresh token, then ends the provider session."""

    async def get(self) -> None:
        """The "Sign out?" page (nothing changes); without a session, the login page."""
        if self.current_user is None:
            self.redirect(self.settings["login_url"], permanent=False)
            return
        html = await self.render_template(
            "casa_logout.html", login_service=self.authenticator.login_service,
            shutdown_on_logout=self.shutdown_on_logout,
        )
        self.finish(html)

    async def post(self) -> None:
        """The logout (JupyterHub's GET logout), after JupyterHub's XSRF check of the form."""
        await super().get()

    async def default_handle_logout(self) -> None:
        user = self.current_user
        if user is not None and hasattr(user, "get_auth_state"):
            await self.authenticator.end_provider_tokens(user)
        await super().default_handle_logout()

    async def render_logout_page(self) -> None:
        url = self.authenticator.provider_logout_url()
        if url:
            self.redirect(url)
            return
        await super().render_logout_page()


async def end_provider_tokens(auth: OIDCAuthenticatorLike, user: Any) -> None:
    """Revoke the refresh token at the provider (best effort) and forget the provider's tokens."""
    if not (auth.revoke_at_logout and auth.enable_auth_state):
        return
    async with auth_state_lock(user.name):
        state = await user.get_auth_state()
        if not state:
            return
        await revoke_refresh_token(auth, user.name, state.get("refresh_token"))
        for key in PROVIDER_TOKEN_KEYS:
            state.pop(key, None)
        state.setdefault(META_KEY, {})["login_required"] = True
        await user.save_auth_state(state)
        SESSIONS.mark(user.name, True)
    auth.log.info("%s signed out; the provider's tokens are revoked and forgotten", user.name)


def provider_logout_url(auth: OIDCAuthenticatorLike) -> str | None:
    """The provider's end-session URL for RP-initiated logout, or None."""
    if auth.logout_redirect_url:
        return auth.logout_redirect_url
    endpoint = auth._provider.end_session_endpoint if auth._provider else ""
    if not (auth.logout_from_provider and endpoint):
        return None
    params = {"client_id": auth.client_id}
    redirect = auth.post_logout_redirect_url
    if not redirect and auth.oauth_callback_url:
        redirect = auth.oauth_callback_url.rsplit("/", 1)[0] + "/login"
    if redirect:
        params["post_logout_redirect_uri"] = redirect
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"
