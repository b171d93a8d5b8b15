"""What "My facility" shows a user: grants, services, the Dask cluster, the server.

``facility_summary`` builds one JSON-ready dict for the page and for ``GET /hub/api/casa/facility``.
It is made from public facts only: grant metadata recorded in auth_state (audience, scopes,
expiry, jti), the configured integrations' ``describe()`` and ``status()``. Token values are never
read into it: the keys are chosen one by one, so a new secret field in auth_state cannot leak.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any
from urllib.parse import urlsplit

from casa_hub.integrations.base import Integration, IntegrationError
from casa_hub.tokens.ledger import newer_entries
from casa_hub.tokens.store import AUTH_STATE_KEY

#: keys of a service's live status the page shows (anything else an integration returns is dropped)
STATUS_TEXT_KEYS = ("state", "name", "reason")


def _text(value: Any, limit: int = 300) -> str:
    return str(value)[:limit] if value is not None else ""


def _utc(timestamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp is not None else None


def _public_url(value: Any) -> str:
    """``value`` if it is an http(s) or data-service URL without credentials, else ``""``."""
    url = _text(value, 2000)
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if not parts.scheme or not parts.netloc or parts.username or parts.password:
        return ""
    if parts.scheme not in {"http", "https", "root", "roots", "xroot", "xroots", "davs", "tls", "tcp", "gateway"}:
        return ""
    return url


def grant_rows(issuer: Any, username: str, groups: list[str], auth_state: dict | None,
               now: float) -> list[dict[str, Any]]:
    """One row per grant the user may receive, with the recorded token's metadata if any."""
    ledger = getattr(issuer, "ledger", None)
    stored = newer_entries((auth_state or {}).get(AUTH_STATE_KEY) or {}, ledger.newest(username) if ledger else {})
    rows = []
    for name in issuer.grants_for(groups):
        grant = issuer.parsed_grants[name]
        entry = stored.get(name) or {}
        scope = entry.get("scope") or grant.render_scopes(username)
        exp = entry.get("exp")
        row: dict[str, Any] = {
            "grant": name,
            "audience": _text(entry.get("aud") or grant.audience),
            "scopes": _text(scope, 4000).split(),
            "lifetime": int(grant.lifetime),
            "issued_at": int(entry["iat"]) if entry.get("iat") is not None else None,
            "expires_at": int(exp) if exp is not None else None,
            "expires_in": int(exp - now) if exp is not None else None,
            "expires_at_utc": _utc(exp),
            "jti": _text(entry.get("jti"), 100) or None,
        }
        row["state"] = ("not issued" if exp is None else "expired" if exp <= now else "valid")
        rows.append(row)
    return rows


def describe(integration: Integration) -> dict[str, Any]:
    """The integration's public description, or a minimal one if ``describe`` fails."""
    try:
        raw = integration.describe() or {}
    except Exception:
        integration.log.warning("%s.describe() failed", type(integration).__name__, exc_info=True)
        raw = {}
    return {
        "name": _text(raw.get("name") or integration.name, 100),
        "title": _text(raw.get("title") or integration.title or integration.name, 100),
        "endpoint": _public_url(raw.get("endpoint")),
        "description": _text(raw.get("description")),
        "grants": [_text(g, 100) for g in raw.get("grants") or []],
    }


async def live_status(integration: Integration, username: str, timeout: float) -> dict[str, Any] | None:
    """The integration's live status, cleaned; ``{"available": False, "reason": ...}`` when it
    cannot be asked (an IntegrationError's message, a timeout, or a generic reason)."""
    try:
        result = integration.status(username)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, timeout)
    except IntegrationError as e:
        return {"available": False, "reason": _text(e) or "the service cannot be reached"}
    except TimeoutError:
        return {"available": False, "reason": f"no answer within {timeout:g} s"}
    except Exception:
        integration.log.warning("%s.status() failed", type(integration).__name__, exc_info=True)
        return {"available": False, "reason": "the service could not be asked (details in the hub's log)"}
    if result is None:
        return None
    status: dict[str, Any] = {"available": bool(result.get("available", True))}
    for key in STATUS_TEXT_KEYS:
        if result.get(key) is not None:
            status[key] = _text(result[key])
    if isinstance(result.get("workers"), int) and not isinstance(result.get("workers"), bool):
        status["workers"] = result["workers"]
    if _public_url(result.get("dashboard")).startswith(("http://", "https://")):
        status["dashboard"] = result["dashboard"]
    return status


def _integrations(spawner: Any) -> list[Integration]:
    try:
        return list(getattr(spawner, "integrations", []) or [])
    except Exception:
        spawner.log.warning("Cannot list the integrations of %s", spawner._log_name, exc_info=True)
        return []


async def facility_summary(user: Any, issuer: Any, settings: Any, now: float | None = None) -> dict[str, Any]:
    """Everything "My facility" shows ``user``, as a JSON-ready dict without any token value."""
    now = int(time.time() if now is None else now)  # whole seconds: expires_in == expires_at - generated_at
    groups = sorted(g.name for g in user.groups)
    auth_state = await user.get_auth_state()
    spawner = user.spawner
    integrations = _integrations(spawner)
    statuses = await asyncio.gather(
        *(live_status(i, user.name, settings.status_timeout) for i in integrations)
    )
    services = []
    dask = None
    for integration, status in zip(integrations, statuses, strict=True):
        service = dict(describe(integration), status=status)
        services.append(service)
        if dask is None and (service["name"] == "dask" or (status and "workers" in status)):
            dask = dict(status or {"available": False, "reason": "the service reports no cluster state"},
                        service=service["title"])
    return {
        "user": user.name,
        "groups": groups,
        "facility": {"name": settings.name, "support_url": settings.support_url},
        "generated_at": int(now),
        "grants": grant_rows(issuer, user.name, groups, auth_state, now),
        "services": services,
        "dask": dask,
        "server": {
            "active": bool(spawner.active),
            "ready": bool(spawner.ready),
            "pending": spawner.pending,
            "url": user.url,
        },
    }
