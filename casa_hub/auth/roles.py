"""Facility admins without ``admin:auth_state``: nobody reads provider tokens through the API.

auth_state holds the provider's access, refresh and ID tokens. JupyterHub's ``admin`` role has
``admin:users``, which includes ``admin:auth_state``, and JupyterHub does not let its scopes be
changed. So members of ``admin_groups`` do not become JupyterHub admins; the drop-ins give those
groups the role ``casa-facility-admin`` instead: every scope of JupyterHub's ``admin`` role, except
that ``admin:users`` is replaced by its parts other than ``admin:auth_state`` (``users``,
``delete:users``, ``read:roles:users``). Facility admins keep the admin page, servers, groups,
services, tokens and deleting users; creating and editing users through the API needs
``admin:users`` and is left out, since users and their rights come from the provider.
``CasaOIDCAuthenticator.admin_reads_auth_state = True`` keeps oauthenticator's behaviour
(``admin_groups`` members are JupyterHub admins). Users listed in ``admin_users`` stay JupyterHub admins.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jupyterhub.roles import get_default_roles

FACILITY_ADMIN_ROLE = "casa-facility-admin"
#: what replaces ``admin:users`` in the facility admins' scopes
ADMIN_USERS_WITHOUT_AUTH_STATE = ["users", "delete:users", "read:roles:users"]


def admin_scopes_without_auth_state() -> list[str]:
    """JupyterHub's ``admin`` scopes with ``admin:users`` split into its parts minus ``admin:auth_state``."""
    admin = next(r for r in get_default_roles() if r["name"] == "admin")
    scopes: list[str] = []
    for scope in admin["scopes"]:
        scopes.extend(ADMIN_USERS_WITHOUT_AUTH_STATE if scope == "admin:users" else [scope])
    return scopes


def add_facility_admin_role(c: Any, groups: Iterable[str]) -> None:
    """Put the role ``casa-facility-admin`` for ``groups`` into the hub config ``c`` (replacing a
    role of that name)."""
    hub = c.JupyterHub
    roles = [dict(r) for r in hub.load_roles] if "load_roles" in hub else []
    roles = [r for r in roles if r.get("name") != FACILITY_ADMIN_ROLE]
    roles.append({"name": FACILITY_ADMIN_ROLE, "scopes": admin_scopes_without_auth_state(),
                  "description": "Facility admins: everything JupyterHub admins may do but read auth_state",
                  "groups": sorted(set(groups))})
    hub.load_roles = roles


def facility_admin_groups(load_roles: Iterable[dict[str, Any]]) -> set[str] | None:
    """The groups holding the facility admins' role in the hub's ``load_roles``; None without the role."""
    role = next((r for r in load_roles if r.get("name") == FACILITY_ADMIN_ROLE), None)
    return None if role is None else set(role.get("groups", []))
