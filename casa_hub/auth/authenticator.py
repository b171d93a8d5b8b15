"""CasaOIDCAuthenticator: OpenID Connect login that also mints the facility's tokens.

Builds on oauthenticator's GenericOAuthenticator and keeps its vocabulary (``token_to_user``,
``build_auth_state_dict``, ``refresh_user``). On top of it:

- endpoints come from one ``oidc_issuer`` URL through discovery (explicit URLs still win);
- PKCE (S256) and a ``nonce`` on every login; the ID token is verified (signature against the
  provider's JWKS, iss, aud/azp, exp, iat, nonce) and a failure stores nothing;
- the username comes from a configurable claim and is refused, not rewritten, when unsafe;
- groups come from a configurable claim and decide access, admin rights and facility grants;
- after the allow checks pass, the facility issuer mints the user's tokens into auth_state.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from typing import Any
from urllib.parse import urlencode

from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import (
    Bool,
    Callable,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from casa_hub import metrics
from casa_hub.auth.groups import GroupMapping, as_names, claim_value, split_unsafe
from casa_hub.auth.handlers import CasaCallbackHandler, CasaLoginHandler
from casa_hub.auth.identity import bind_at_login, identity_handlers
from casa_hub.auth.logout import CasaLogoutHandler, end_provider_tokens, provider_logout_url
from casa_hub.auth.oidc import JWKSCache, OIDCError, ProviderMetadata, discover, verify_id_token
from casa_hub.auth.provider_http import fetch_quietly, fetch_userinfo, token_request_failure
from casa_hub.auth.refresh import ProviderRefresher, provider_meta
from casa_hub.auth.roles import FacilityAdminsMixin
from casa_hub.common import logsafe
from casa_hub.pages.facility_info import install_templates
from casa_hub.pages.handlers import page_handlers
from casa_hub.tokens.broker import broker_handlers
from casa_hub.tokens.grants import UnsafeUsername, check_username
from casa_hub.tokens.handlers import issuer_handlers
from casa_hub.tokens.issuer import CasaTokenIssuer
from casa_hub.tokens.ledger import SESSIONS
from casa_hub.tokens.store import META_KEY, store_minted

_login_nonce: contextvars.ContextVar[str | None] = contextvars.ContextVar("casa_login_nonce")


class CasaOIDCAuthenticator(FacilityAdminsMixin, GenericOAuthenticator):
    """OpenID Connect login for an analysis facility."""

    login_service = Unicode(
        "the facility's identity provider",
        config=True,
        help="Name of the identity provider shown on the sign-in button.",
    )

    oidc_issuer = Unicode(
        "",
        config=True,
        help="""The provider's issuer URL. Endpoints are read from
        ``<oidc_issuer>/.well-known/openid-configuration``; ``authorize_url``, ``token_url`` and
        ``userdata_url`` override them when set explicitly.""",
    )

    discovery_attempts = Integer(
        10,
        config=True,
        help="How many times to try OIDC discovery (with exponential backoff) before a login fails.",
    )

    id_token_leeway = Float(
        30.0, config=True, help="Seconds of clock skew tolerated when checking ID token times."
    )

    username_claim = Union(
        [Unicode(), Callable()],
        default_value="preferred_username",
        config=True,
        help="""Claim (from the verified ID token merged with userinfo) used as the username, or a
        callable taking the claims dict. The result is lower-cased; names that cannot be placed
        safely in a path are refused with a clear message, also when only lower-casing would make
        them safe (KELVIN SIGN lower-cases to an ASCII 'k'). A name listed in ``username_map``
        (lower-cased) is mapped instead of refused.""",
    )

    groups_claim = Union(
        [Unicode(), Callable()],
        default_value="groups",
        config=True,
        help="""Claim holding the user's groups (a list, or a space-separated string), from the
        verified ID token merged with userinfo: a claim name (``groups``, ``wlcg.groups``), a dotted
        path into nested claims (Keycloak: ``realm_access.roles``), or a callable taking the claims.
        A leading ``/`` (WLCG style) is removed; ``group_table`` and ``group_patterns`` map values to
        facility groups. Groups decide ``allowed_groups``, ``admin_groups`` and the facility grants.
        oauthenticator's ``auth_state_groups_key``, when set, is used instead (a path into auth_state).""",
    )

    group_table = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Claim values mapped to facility groups, exactly, e.g. EGI Check-in's
        ``{"urn:mace:egi.eu:group:cms:role=member#aai.egi.eu": "cms/physicists"}``.""",
    )

    group_patterns = List(
        Dict(value_trait=Unicode()),
        config=True,
        help="""Claim values mapped to facility groups by regular expressions, tried in order after
        ``group_table``: ``[{"match": "urn:mace:egi.eu:group:([a-z0-9-]+):role=member#aai.egi.eu",
        "group": "\\1"}]`` (the whole value must match; ``group`` may use the match's groups).""",
    )

    keep_unmapped_groups = Bool(
        True,
        config=True,
        help="""Keep claim values that neither ``group_table`` nor ``group_patterns`` map, as they
        are. Set False when the claim holds much besides groups (EGI entitlements, Keycloak roles).""",
    )

    mint_tokens_at_login = Bool(
        True,
        config=True,
        help="Mint the user's facility tokens into auth_state right after a successful login.",
    )

    publish_issuer = Bool(
        True,
        config=True,
        help="""Serve the facility issuer's discovery document and JWKS under ``/hub/casa-issuer/``
        and the token broker under ``/hub/api/casa/tokens/`` (see ``casa_hub.tokens.broker``).""",
    )

    custom_403_message = Unicode(
        "Your account is not a member of a group allowed to use this facility. "
        "Ask the facility's administrators for access.",
        config=True,
        help="Message shown to a user who signed in at the provider but may not use the hub.",
    )

    extra_login_scopes = List(
        Unicode(),
        config=True,
        help="Scopes requested in addition to openid, profile, email and groups.",
    )

    refresh_margin = Float(
        60.0,
        config=True,
        help="""Refresh the provider's access token this many seconds before it expires. Refreshes
        happen on requests, at most every ``auth_refresh_age`` seconds, and before each spawn.""",
    )

    refresh_retry_interval = Float(
        30.0,
        config=True,
        help="""After a refresh failed because the provider was unreachable or failing, wait this
        long (counted from the end of the failed attempt) before trying again.""",
    )

    refresh_timeout = Float(
        30.0,
        config=True,
        help="""Seconds to wait for the provider's token endpoint during a refresh. Generous on
        purpose: a refresh that times out after the provider received it may have spent the rotating
        refresh token, so it is never sent again (see ``provider_outage_grace``).""",
    )

    provider_outage_grace = Float(
        1800.0,
        config=True,
        help="""While the provider is unreachable or failing, keep a signed-in user's session, and
        keep re-minting their facility tokens, for this many seconds after the provider's access
        token expired (bounded by the refresh token's own expiry when the provider says it,
        ``refresh_expires_in``). Long enough to ride out a provider restart. Afterwards the user must
        sign in again, and the hub revokes the refresh token it holds (best effort). 0: the session
        ends when the access token expires.""",
    )

    logout_from_provider = Bool(
        True,
        config=True,
        help="""On logout, also end the session at the provider (OIDC RP-initiated logout) when
        its discovery document has an ``end_session_endpoint``. ``logout_redirect_url`` wins when set.""",
    )

    revoke_at_logout = Bool(
        True,
        config=True,
        help="""On logout, revoke the refresh token at the provider's ``revocation_endpoint`` (RFC
        7009) and forget the provider's tokens, so nothing can renew the session afterwards.""",
    )

    post_logout_redirect_url = Unicode(
        "",
        config=True,
        help="""Where the provider sends the browser after its logout (must be registered with the
        provider). Default: the hub's login page, derived from ``oauth_callback_url``.""",
    )

    admin_reads_auth_state = Bool(
        False,
        config=True,
        help="""Make members of ``admin_groups`` JupyterHub admins, who can read every user's
        auth_state (the provider's access, refresh and ID tokens) through the REST API. Default: no;
        the drop-ins give those groups the role ``casa-facility-admin`` instead: every admin scope
        but ``admin:auth_state`` (``casa_hub.auth.roles``).""",
    )

    login_handler = CasaLoginHandler
    callback_handler = CasaCallbackHandler
    logout_handler = CasaLogoutHandler

    @default("scope")
    def _scope_default(self) -> list[str]:
        return ["openid", "profile", "email", "groups", *self.extra_login_scopes]

    @default("auth_state_groups_key")
    def _auth_state_groups_key_default(self) -> str:
        return ""  # groups_claim decides; oauthenticator's setting applies only when set explicitly

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    @default("basic_auth")
    def _basic_auth_default(self) -> bool:
        return True

    @default("auth_refresh_age")
    def _auth_refresh_age_default(self) -> int:
        return 60

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        logsafe.install(self.log)  # one log record, one line: request and provider values cannot forge lines
        install_templates(self.parent)  # the hub's pages (casa_hub/pages/templates), before the hub loads them

    _provider: ProviderMetadata | None = None
    _jwks: JWKSCache | None = None
    _provider_lock: asyncio.Lock | None = None

    # ---- provider discovery ---------------------------------------------------------------------

    async def ensure_provider(self) -> ProviderMetadata:
        """Discover the provider once; explicit endpoint settings take precedence."""
        if self._provider is not None:
            return self._provider
        if self._provider_lock is None:
            self._provider_lock = asyncio.Lock()
        async with self._provider_lock:
            if self._provider is None:
                if not self.oidc_issuer:
                    raise OIDCError("CasaOIDCAuthenticator.oidc_issuer is not set", "config")
                meta = await discover(
                    self.oidc_issuer,
                    attempts=self.discovery_attempts,
                    validate_cert=self.validate_server_cert,
                )
                if not self.authorize_url:
                    self.authorize_url = meta.authorization_endpoint
                if not self.token_url:
                    self.token_url = meta.token_endpoint
                if not self.userdata_url and meta.userinfo_endpoint:
                    self.userdata_url = meta.userinfo_endpoint
                self._jwks = JWKSCache(meta.jwks_uri, validate_cert=self.validate_server_cert)
                self._provider = meta
                self.log.info("OIDC provider %s discovered", meta.issuer)
        return self._provider

    def get_handlers(self, app: Any) -> list[tuple]:
        handlers = list(super().get_handlers(app))
        if self.publish_issuer:
            issuer = self.token_issuer
            issuer.check_config()
            handlers.extend(issuer_handlers(issuer))
            handlers.extend(broker_handlers(issuer))
        handlers.extend(identity_handlers())  # admins re-bind an account (casa_hub.auth.identity)
        handlers.extend(page_handlers())  # "My facility" and its JSON twin (casa_hub.pages.handlers)
        try:
            # start discovery now so the first login does not wait for it
            self._warmup = asyncio.get_running_loop().create_task(self._warm_up())
        except RuntimeError:
            pass
        return handlers

    async def _warm_up(self) -> None:
        try:
            await self.ensure_provider()
        except OIDCError as e:
            self.log.error("OIDC discovery failed at start-up (logins will retry): %s", e)

    @property
    def token_issuer(self) -> CasaTokenIssuer:
        return CasaTokenIssuer.instance(config=self.config, log=self.log)

    # ---- the login ------------------------------------------------------------------------------

    async def authenticate(self, handler: Any, data: Any = None, **kwargs: Any) -> dict | None:
        try:
            await self.ensure_provider()
        except OIDCError as e:
            raise web.HTTPError(503, str(e)) from None
        nonce = handler.pop_nonce() if hasattr(handler, "pop_nonce") else None
        if not nonce:
            raise web.HTTPError(
                400, "This sign-in has expired or was started in another browser. Please sign in again."
            )
        reset = _login_nonce.set(nonce)
        try:
            return await super().authenticate(handler, data, **kwargs)
        except OIDCError as e:
            self.log.warning("Login refused (%s): %s", e.reason, e)
            raise web.HTTPError(403, f"Sign-in failed: {e}") from None
        finally:
            _login_nonce.reset(reset)

    async def get_token_info(self, handler: Any, params: dict) -> dict:
        """Exchange a code or refresh token; errors never echo the provider's response."""
        try:
            token_info = await self.httpfetch(
                self.token_url,
                method="POST",
                headers=self.build_token_info_request_headers(),
                body=_urlencode(params),
                validate_cert=self.validate_server_cert,
            )
        except Exception as e:
            raise token_request_failure(self, e) from None
        if "access_token" not in token_info:
            raise web.HTTPError(502, "The identity provider returned no access token.")
        return token_info

    async def token_to_user(self, token_info: dict) -> dict:
        """Verify the ID token, then merge in userinfo for the same subject."""
        await self.ensure_provider()
        id_token = token_info.get("id_token")
        if not id_token:
            raise OIDCError("the provider returned no ID token (is 'openid' requested?)", "bad_id_token")
        claims = await verify_id_token(
            id_token,
            jwks=self._jwks,
            issuer=self._provider.issuer,
            client_id=self.client_id,
            nonce=_login_nonce.get(None),
            leeway=self.id_token_leeway,
        )
        user_info = dict(claims)
        try:
            user_info.update(await fetch_userinfo(self, token_info, claims["sub"]))
        except ValueError as e:
            raise OIDCError(str(e), "bad_userinfo") from None
        return user_info

    async def fetch_userinfo(self, token_info: dict, subject: str) -> dict:
        """The provider's userinfo for ``subject`` (``{}`` without a userinfo endpoint); also read
        at every refresh, so groups that only userinfo holds are current."""
        return await fetch_userinfo(self, token_info, subject)

    async def fetch(self, req: Any, label: str = "fetching", parse_json: bool = True, **kwargs: Any) -> Any:
        """oauthenticator's request wrapper, without the provider's response body in the log."""
        return await fetch_quietly(self, req, label, parse_json, **kwargs)

    def user_info_to_username(self, user_info: dict) -> str:
        if callable(self.username_claim):
            raw, wanted = self.username_claim(user_info), "suitable claim"
        else:
            raw, wanted = user_info.get(self.username_claim), f"'{self.username_claim}'"
        if not raw or not isinstance(raw, str):
            raise OIDCError(
                f"your account has no {wanted} to use as a username; "
                "ask the facility's administrators",
                "no_username",
            )
        try:
            if raw.lower() not in self.username_map:
                # checked before lower-casing too: str.lower() turns KELVIN SIGN (U+212A) into an
                # ASCII 'k', so a look-alike claim would otherwise sign in as another user's name
                check_username(raw)
            return check_username(self.normalize_username(raw))
        except UnsafeUsername as e:
            raise OIDCError(f"your username cannot be used at this facility: {e}", "unsafe_username") from None

    @validate("group_patterns")
    def _check_group_patterns(self, proposal: Any) -> list:
        try:
            GroupMapping.from_settings({}, proposal["value"], True)
        except ValueError as e:
            raise TraitError(f"CasaOIDCAuthenticator.{e}") from None
        return proposal["value"]

    async def get_user_groups(self, auth_state: dict) -> set[str]:
        """The user's facility groups: from the claim (``groups_claim``, or oauthenticator's
        ``auth_state_groups_key``), mapped (``group_table``, ``group_patterns``), without names
        holding control characters."""
        claims = auth_state.get(self.user_auth_state_key) or {}
        if self.auth_state_groups_key:
            raw: Any = await super().get_user_groups(auth_state)
        elif callable(self.groups_claim):
            raw = self.groups_claim(claims)
            if inspect.isawaitable(raw):
                raw = await raw
        else:
            raw = claim_value(claims, self.groups_claim)
        names = as_names(list(raw) if isinstance(raw, set) else raw)
        if raw is not None and not names and not isinstance(raw, (list, tuple, set, str)):
            self.log.warning("Ignoring groups claim %r of unexpected type", self.groups_claim)
        mapping = GroupMapping.from_settings(self.group_table, self.group_patterns, self.keep_unmapped_groups)
        groups, unsafe = split_unsafe(mapping.map(names))
        if unsafe:  # never into JupyterHub's groups, the logs or wlcg.groups
            self.log.warning("Ignoring %d group name(s) with control characters: %s", len(unsafe),
                             ", ".join(sorted(logsafe.escape_controls(g) for g in unsafe)))
        return groups

    async def get_authenticated_user(self, handler: Any, data: Any) -> dict | None:
        """The base class's login, counted in ``casa_hub_logins_total`` by outcome."""
        try:
            user = await super().get_authenticated_user(handler, data)
        except web.HTTPError as e:
            metrics.count_login(getattr(e, "casa_reason", "provider_refused" if e.status_code == 403
                                        else "expired_login" if e.status_code == 400 else "provider_unreachable"))
            raise
        metrics.count_login("success" if user else "not_allowed")
        return user

    def build_auth_state_dict(self, token_info: dict, user_info: dict) -> dict:
        auth_state = super().build_auth_state_dict(token_info, user_info)
        auth_state[META_KEY] = provider_meta(token_info, time.time(), generation=0)
        return auth_state

    # ---- staying signed in ----------------------------------------------------------------------

    _refresher: ProviderRefresher | None = None

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> bool | dict:
        """Refresh provider tokens before they expire and re-mint facility tokens (see casa_hub.auth.refresh)."""
        if not self.enable_auth_state:
            return True
        if self.refresh_user_hook is not None:
            refreshed = await self._call_refresh_user_hook(user, await user.get_auth_state())
            if refreshed is not None:
                return refreshed
        if self._refresher is None:
            self._refresher = ProviderRefresher(self)
        result = await self._refresher.refresh_user(user)
        if not result and handler is not None and not hasattr(handler, "_token_authenticated"):
            # JupyterHub reads this attribute after a failed refresh of a cookie-authenticated
            # request without ever having set it (a traceback per request otherwise)
            handler._token_authenticated = False
        return result

    # ---- logout ---------------------------------------------------------------------------------

    async def end_provider_tokens(self, user: Any) -> None:
        """Revoke the refresh token at the provider (best effort) and forget the provider's tokens."""
        await end_provider_tokens(self, user)

    def provider_logout_url(self) -> str | None:
        """The provider's end-session URL for RP-initiated logout, or None."""
        return provider_logout_url(self)

    async def run_post_auth_hook(self, handler: Any, auth_model: dict) -> dict:
        """After the allow checks: check (or record) the account's provider identity, mint the
        user's facility tokens, then the site's hook."""
        finder = getattr(handler, "find_user", None)
        existing = finder(auth_model["name"]) if finder is not None else None
        await bind_at_login(self.log, existing, auth_model, self.user_auth_state_key)
        SESSIONS.mark(auth_model["name"], False)  # a new sign-in: the broker may mint again
        if self.mint_tokens_at_login and auth_model.get("auth_state") is not None:
            minted = self.token_issuer.mint_all(auth_model["name"], auth_model.get("groups") or [])
            store_minted(auth_model["auth_state"], minted.values(), now=time.time())
        return await super().run_post_auth_hook(handler, auth_model)


def _urlencode(params: dict) -> bytes:
    return urlencode({k: v for k, v in params.items() if v is not None}).encode("utf-8")
