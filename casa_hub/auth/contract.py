"""What the login helpers (refresh, logout) need of the authenticator, as a Protocol.

``refresh.py`` and ``logout.py`` are typed against :class:`OIDCAuthenticatorLike` instead of
importing ``CasaOIDCAuthenticator``, so imports only go one way: authenticator -> helpers.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol


class OIDCAuthenticatorLike(Protocol):
    """The attributes of ``CasaOIDCAuthenticator`` that refresh and logout use."""

    log: logging.Logger
    _jwks: Any
    _provider: Any
    admin_users: set[str]
    basic_auth: bool
    client_id: str
    client_secret: str
    enable_auth_state: bool
    id_token_leeway: float
    logout_from_provider: bool
    logout_redirect_url: str
    manage_groups: bool
    oauth_callback_url: str
    post_logout_redirect_url: str
    refresh_margin: float
    refresh_retry_interval: float
    refresh_timeout: float
    provider_outage_grace: float
    revoke_at_logout: bool
    token_issuer: Any
    token_url: str
    user_auth_state_key: str
    validate_server_cert: bool

    async def ensure_provider(self) -> Any: ...
    async def fetch_userinfo(self, token_info: dict[str, Any], subject: str) -> dict[str, Any]: ...
    async def httpfetch(self, url: str, **kwargs: Any) -> Any: ...
    async def update_auth_model(self, model: dict[str, Any]) -> dict[str, Any]: ...
    async def _apply_managed_groups(self, model: dict[str, Any]) -> dict[str, Any]: ...
    async def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]: ...
    async def check_allowed(self, username: str, model: dict[str, Any] | None = None) -> bool: ...
    def build_refresh_token_request_params(self, refresh_token: str) -> dict[str, Any]: ...
    def build_token_info_request_headers(self) -> dict[str, str]: ...
    def build_auth_state_dict(self, token_info: dict[str, Any], user_info: dict[str, Any]) -> dict[str, Any]: ...
    def user_info_to_username(self, user_info: dict[str, Any]) -> str: ...
