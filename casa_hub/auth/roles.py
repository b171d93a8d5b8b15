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


class FacilityAdminsMixin:
    """For the authenticator (before oauthenticator's class): ``admin_groups`` give the role
    ``casa-facility-admin`` instead of JupyterHub's admin flag, unless ``admin_reads_auth_state``."""

    admin_groups: Any
    admin_users: Any
    admin_reads_auth_state: bool
    log: Any
    parent: Any

    async def update_auth_model(self, auth_model: dict) -> dict:
        """oauthenticator's model, except that ``admin_groups`` give the role ``casa-facility-admin``
        (no ``admin:auth_state``) instead of JupyterHub's admin flag (see ``casa_hub.auth.roles``)."""
        return self._facility_admins(await super().update_auth_model(auth_model))

    async def _apply_managed_groups(self, auth_model: dict) -> dict:
        # oauthenticator decides admin from admin_groups here (after update_auth_model)
        return self._facility_admins(await super()._apply_managed_groups(auth_model))

    def _facility_admins(self, auth_model: dict) -> dict:
        if self.admin_groups and not self.admin_reads_auth_state and self._facility_admin_role():
            auth_model["admin"] = auth_model["name"] in self.admin_users
        return auth_model

    async def check_allowed(self, username: str, auth_model: dict | None) -> bool:
        """Members of ``admin_groups`` are allowed, as in oauthenticator (which decides it by the
        admin flag, which facility admins no longer get)."""
        if auth_model and self.admin_groups:
            groups = auth_model.get("groups")
            if groups is None and auth_model.get("auth_state"):
                groups = await self.get_user_groups(auth_model["auth_state"])
            if set(groups or ()) & set(self.admin_groups):
                return True
        return await super().check_allowed(username, auth_model)

    def _facility_admin_role(self) -> bool:
        """Whether the role ``casa-facility-admin`` is held by every group of ``admin_groups``
        (the drop-ins define it from the site file); otherwise warn once and keep the admin flag."""
        groups = facility_admin_groups(getattr(self.parent, "load_roles", None) or [])
        if groups is not None and set(self.admin_groups) <= groups:
            return True
        if not getattr(self, "_warned_admin_role", False):
            self._warned_admin_role = True
            self.log.warning(
                "admin_groups %s make JupyterHub admins, who can read users' provider tokens: set "
                "admin_groups in the site file (the drop-ins then give them the role casa-facility-admin)",
                sorted(self.admin_groups))
        return False
