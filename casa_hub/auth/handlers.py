"""The login pages' handlers: the redirect to the provider (PKCE, state, nonce) and its callback."""

from __future__ import annotations

import secrets
from typing import Any

from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from tornado import web

from casa_hub.auth.oidc import OIDCError

NONCE_COOKIE = "casa-oidc-nonce"


class CasaLoginHandler(OAuthLoginHandler):
    """Redirects to the provider with PKCE (from the base class), state and a nonce."""

    async def get(self) -> None:
        try:
            await self.authenticator.ensure_provider()
        except OIDCError as e:
            self.authenticator.log.error("Cannot start a login: %s", e)
            raise web.HTTPError(503, str(e)) from None
        super().get()

    def authorize_redirect(self, *args: Any, extra_params: dict | None = None, **kwargs: Any) -> None:
        nonce = secrets.token_urlsafe(32)
        self._set_cookie(NONCE_COOKIE, nonce, expires_days=1, httponly=True)
        super().authorize_redirect(*args, extra_params=dict(extra_params or {}, nonce=nonce), **kwargs)


class CasaCallbackHandler(OAuthCallbackHandler):
    """The provider's redirect back to the hub."""

    def check_error(self) -> None:
        error = self.get_argument("error", "")
        if error:
            description = self.get_argument("error_description", "")
            self.authenticator.log.warning("Provider refused the login: %s %s", error, description)
            raise web.HTTPError(
                403, f"The identity provider did not sign you in ({error}). Please try again."
            )

    def _request_summary(self) -> str:
        # used by tornado's log lines for refused callbacks: never log the code or state
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def pop_nonce(self) -> str | None:
        raw = self.get_secure_cookie(NONCE_COOKIE)
        self.clear_cookie(NONCE_COOKIE)
        return raw.decode("ascii", "replace") if raw else None
