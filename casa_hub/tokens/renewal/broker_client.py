"""The renewal agent's client of the hub's token broker (``POST <api>/casa/tokens/<grant>``)."""

from __future__ import annotations

import json
import os
import re
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from casa_hub.tokens.renewal.files import token_times

JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*")


def redact(text: str, limit: int = 200) -> str:
    """A broker message or error text made safe for a log line."""
    return JWT_LIKE.sub("[redacted]", text)[:limit]


class BrokerError(Exception):
    """The broker did not give a token."""


class BrokerUnavailable(BrokerError):
    """Transient: unreachable, timed out, 5xx, 429 or an unusable answer. Retry later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class GrantRefused(BrokerError):
    """Permanent: the hub says this user may not (or no longer) receive this grant."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _message(body: bytes) -> str:
    try:
        return redact(str(json.loads(body).get("message", "")))
    except (ValueError, AttributeError):
        return ""


async def request_token(
    api_url: str, api_token: str, grant: str, timeout: float, now: float, ssl: dict[str, str] | None = None
) -> str:
    """One call to the broker: the new token for ``grant``, or BrokerUnavailable / GrantRefused."""
    url = f"{api_url.rstrip('/')}/casa/tokens/{quote(grant, safe='')}"
    req = HTTPRequest(
        url, method="POST", body=b"", headers={"Authorization": f"token {api_token}"},
        connect_timeout=timeout, request_timeout=timeout, follow_redirects=False, **(ssl or {}),
    )
    try:
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
    except HTTPClientError as e:  # 599: timeout or closed connection
        raise BrokerUnavailable(f"no answer from the hub ({redact(e.message or str(e.code))})") from None
    except OSError as e:
        raise BrokerUnavailable(f"cannot reach the hub ({e.strerror or type(e).__name__})") from None
    if resp.code in (401, 403, 404):
        raise GrantRefused(resp.code, _message(resp.body) or "refused")
    if resp.code == 429:
        raise BrokerUnavailable(
            "rate limited by the hub (HTTP 429)", parse_retry_after(resp.headers.get("Retry-After"), now)
        )
    if resp.code != 200:
        raise BrokerUnavailable(f"HTTP {resp.code} from the hub {_message(resp.body)}".rstrip())
    try:
        token = str(json.loads(resp.body)["token"]).strip()
    except (ValueError, KeyError, TypeError):
        raise BrokerUnavailable("the hub's answer holds no token") from None
    if token_times(token)[2] is None or not token.isascii():
        raise BrokerUnavailable("the hub's answer is not a JWT with iat and exp")
    return token


def hub_ssl_options() -> dict[str, str]:
    """Client TLS settings for JupyterHub's internal_ssl, from the server's environment."""
    env = {"client_cert": "JUPYTERHUB_SSL_CERTFILE", "client_key": "JUPYTERHUB_SSL_KEYFILE",
           "ca_certs": "JUPYTERHUB_SSL_CLIENT_CA"}
    return {k: os.environ[v] for k, v in env.items() if os.environ.get(v)}
