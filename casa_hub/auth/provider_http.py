"""Requests to the provider's endpoints that never put its answers (which may hold tokens) in a log
or a page, and refusals that name their cause.

oauthenticator's ``fetch`` logs the body of every failed response; here a failure is logged as its
status, method, URL (without query) and the OAuth ``error`` code only (``invalid_client``,
``invalid_grant``, ...). A refused client authentication (``invalid_client``, or 401 at the token
endpoint) is reported as what it is: the hub's client credentials or client authentication method
(``basic_auth``: ``client_secret_basic`` when True, ``client_secret_post`` when False) do not
match the provider's registration.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

from tornado import web
from tornado.httpclient import HTTPClientError

_ERROR_CODE = re.compile(r"[a-z_]{1,64}")

CLIENT_AUTH_REFUSED = ("The identity provider did not accept this hub's client credentials. This is a "
                       "configuration problem at the facility, not a problem with your account: please "
                       "tell the facility's administrators.")
SIGN_IN_REFUSED = "The identity provider refused to complete the sign-in. Please sign in again."


def oauth_error_code(error: BaseException) -> str | None:
    """The OAuth ``error`` code of a failed response (a short lower-case word), or None."""
    response = getattr(error, "response", None)
    try:
        body = json.loads(response.body) if response is not None and response.body else {}
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def url_without_query(url: str) -> str:
    return urlunparse(urlparse(url)._replace(query=""))


async def fetch_quietly(auth: Any, req: Any, label: str = "fetching", parse_json: bool = True,
                        **kwargs: Any) -> Any:
    """oauthenticator's ``fetch`` without the response body in the log."""
    try:
        resp = await auth.http_client.fetch(req, **kwargs)
    except HTTPClientError as e:
        code = oauth_error_code(e)
        auth.log.error("Error %s: HTTP %s %s %s%s", label, e.code, req.method, url_without_query(req.url),
                       f" ({code})" if code else "")
        raise
    if not parse_json:
        return resp
    return json.loads(resp.body.decode("utf8", "replace")) if resp.body else None


def token_request_failure(auth: Any, error: BaseException) -> web.HTTPError:
    """The page error for a failed code exchange, logged with its cause (never the response)."""
    status = getattr(error, "code", None)
    code = oauth_error_code(error)
    if code == "invalid_client" or status == 401:
        method = "client_secret_basic" if auth.basic_auth else "client_secret_post"
        auth.log.error("The provider refused the hub's client authentication (HTTP %s%s): check client_id, "
                       "client_secret and the client authentication method (basic_auth=%s sends %s)",
                       status, f", {code}" if code else "", auth.basic_auth, method)
        return web.HTTPError(502, CLIENT_AUTH_REFUSED)
    auth.log.warning("Token request to the provider failed (%s%s)", status or type(error).__name__,
                     f", {code}" if code else "")
    return web.HTTPError(403 if status and 400 <= status < 500 else 502, SIGN_IN_REFUSED)


async def fetch_userinfo(auth: Any, token_info: dict[str, Any], subject: str) -> dict[str, Any]:
    """The provider's userinfo for ``subject`` with the access token of ``token_info`` (``{}``
    without a userinfo endpoint); ``ValueError`` when it describes another subject."""
    if not auth.userdata_url:
        return {}
    userinfo = await auth.httpfetch(
        auth.userdata_url, "fetching user info", method="GET",
        headers=auth.build_userdata_request_headers(token_info["access_token"],
                                                    token_info.get("token_type", "Bearer")),
        validate_cert=auth.validate_server_cert,
    )
    if not isinstance(userinfo, dict) or userinfo.get("sub") != subject:
        raise ValueError("userinfo is for another subject than the ID token")
    return userinfo


async def revoke_refresh_token(auth: Any, username: str, refresh_token: str | None) -> None:
    """Revoke ``refresh_token`` at the provider's ``revocation_endpoint`` (RFC 7009), best effort:
    a failure is logged (status only) and the caller goes on."""
    endpoint = auth._provider.revocation_endpoint if auth._provider else ""
    if not (refresh_token and endpoint):
        return
    params = {"token": refresh_token, "token_type_hint": "refresh_token"}
    if not auth.basic_auth:
        params.update(client_id=auth.client_id, client_secret=auth.client_secret)
    try:
        await auth.httpfetch(
            endpoint, method="POST", headers=auth.build_token_info_request_headers(),
            body=urlencode(params).encode("utf-8"), parse_json=False,
            validate_cert=auth.validate_server_cert, request_timeout=auth.refresh_timeout,
        )
    except Exception as e:  # the session ends either way
        auth.log.warning("Could not revoke %s's refresh token at the provider (%s)",
                         username, getattr(e, "code", type(e).__name__))
