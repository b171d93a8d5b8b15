"""The credential the hub uses to manage a user's cluster: a short-lived token of that user.

Dask Gateway (``JupyterHubAuthenticator``) identifies a caller by asking the hub
``GET /hub/api/user`` with the caller's token, and, when the gateway runs as the JupyterHub
service ``<name>``, admits only tokens holding ``access:services!service=<name>``. A cluster
belongs to the user the token identifies.

So to create a user's cluster before their notebook exists, the hub mints a token *of that user*
with exactly that one scope, a lifetime of minutes, and the note ``NOTE``; it is held in the hub's
memory only (never written to a file, an env var, a log line or the spawner's state), used for the
gateway calls of one step (create and wait, or stop) and deleted right after. No admin or service
credential is ever used for a user's cluster, and nothing new reaches the notebook, which talks to
the gateway with its own ``JUPYTERHUB_API_TOKEN`` (that token needs the same scope:
``casa_hub.integrations.dask.gateway_service.enable_gateway_access``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jupyterhub import orm

#: note on the token in the user's token list (the hub's token page shows it while it exists)
NOTE = "casa_hub: Dask Gateway cluster lifecycle (held by the hub, deleted after use)"


class MissingGatewayScope(RuntimeError):
    """The user may not hold a token for the gateway service; the hub config lacks the scope."""


def gateway_scope(service_name: str) -> str:
    return f"access:services!service={service_name}"


def issue_user_token(user: Any, service_name: str, lifetime: float) -> str:
    """A new API token of ``user`` (a JupyterHub ``User``) with only the gateway scope."""
    scope = gateway_scope(service_name)
    try:
        return user.new_api_token(scopes=[scope], expires_in=max(1, int(lifetime)), note=NOTE)
    except ValueError as e:
        raise MissingGatewayScope(
            f"user {user.name} does not hold the scope {scope}, so the hub cannot manage their "
            "Dask cluster; give it to users in the hub config with "
            "casa_hub.integrations.dask.gateway_service.enable_gateway_access(c)"
        ) from e


def revoke_user_token(db: Any, token: str) -> None:
    """Delete the token from the hub's database (no error if it is already gone)."""
    found = orm.APIToken.find(db, token)
    if found is not None:
        db.delete(found)
        db.commit()


@contextmanager
def user_gateway_token(user: Any, service_name: str, lifetime: float) -> Iterator[str]:
    """``with user_gateway_token(spawner.user, "dask-gateway", 300) as token: ...``"""
    token = issue_user_token(user, service_name, lifetime)
    try:
        yield token
    finally:
        revoke_user_token(user.db, token)
