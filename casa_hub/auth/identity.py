"""Hub accounts bound to the provider identity (``iss`` + ``sub``) they were first used with.

OIDC says a provider's ``preferred_username`` (or email) is not unique and may change; only
``iss`` + ``sub`` identify an account. The hub derives its usernames from a claim (lower-cased), so
without a binding a second provider account whose name is ``Bob`` would sign in as the hub user
``bob`` and get bob's server, files and tokens. So:

- at the first login of a hub user, its ``iss`` and ``sub`` are stored in auth_state
  (``casa_identity``; kept at logout, carried over by every refresh);
- every later login and every refresh must present the same ``iss`` and ``sub``; another subject
  presenting the same (or a case-variant) name is refused with a clear message and an audit line
  ``identity refused ...``, and nothing is stored;
- an admin re-binds deliberately: ``DELETE /hub/api/casa/identity/<user>`` (scope ``delete:users``)
  removes the binding (audit line ``identity unbound ...``); the next login binds anew. Deleting the
  user in the hub does the same.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from casa_hub.tokens.store import auth_state_lock

#: auth_state key of the binding: {"iss": ..., "sub": ..., "bound_at": epoch seconds}
IDENTITY_KEY = "casa_identity"

REFUSAL = ("This hub account belongs to another account at the identity provider, so you cannot sign "
           "in with this one. If the hub account is yours, ask the facility's administrators to re-bind it.")


class IdentityConflict(Exception):
    """The provider identity is not the one the hub account is bound to."""


def provider_identity(user_info: dict[str, Any]) -> dict[str, str]:
    """``{"iss", "sub"}`` of the verified claims (``sub`` is required by the ID-token check)."""
    return {"iss": str(user_info.get("iss") or ""), "sub": str(user_info.get("sub") or "")}


def bound_identity(auth_state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The binding stored in ``auth_state``, or None."""
    bound = (auth_state or {}).get(IDENTITY_KEY)
    return bound if isinstance(bound, dict) and bound.get("sub") else None


def same_identity(bound: dict[str, Any], presented: dict[str, str]) -> bool:
    return (bound.get("iss") or "", bound.get("sub")) == (presented["iss"], presented["sub"])


def audit(log: Any, event: str, username: str, **fields: Any) -> None:
    """One audit line ``identity <event> user=... k=v ...`` (values escaped by the hub's log filter)."""
    parts = " ".join(f"{k}={json.dumps(str(v))}" for k, v in fields.items())
    log.getChild("audit").info("identity %s user=%s %s", event, username, parts)


async def bind_at_login(log: Any, user: Any, auth_model: dict[str, Any], user_info_key: str) -> None:
    """Check ``auth_model``'s provider identity against ``user``'s binding (``user`` is None for a
    new hub user) and record the binding in the model's auth_state. Raises ``web.HTTPError(403)``
    for another subject; the model is then discarded, nothing is stored."""
    state = auth_model.get("auth_state")
    if state is None:
        return
    presented = provider_identity(state.get(user_info_key) or {})
    bound = bound_identity(await user.get_auth_state()) if user is not None else None
    if bound and not same_identity(bound, presented):
        audit(log, "refused", auth_model["name"], iss=presented["iss"], sub=presented["sub"],
              bound_iss=bound.get("iss", ""), bound_sub=bound["sub"])
        error = web.HTTPError(403, REFUSAL)
        error.casa_reason = "identity_conflict"  # type: ignore[attr-defined] - the login metric's label
        raise error
    if bound:
        state[IDENTITY_KEY] = bound
        return
    state[IDENTITY_KEY] = dict(presented, bound_at=int(time.time()))
    audit(log, "bound", auth_model["name"], iss=presented["iss"], sub=presented["sub"])


def check_refresh(state: dict[str, Any], user_info: dict[str, Any]) -> None:
    """Before a refresh is accepted: the refreshed claims must be the bound identity's; raises
    ``IdentityConflict`` otherwise."""
    bound = bound_identity(state)
    if bound and not same_identity(bound, provider_identity(user_info)):
        raise IdentityConflict("the provider now reports another subject than the one this account is bound to")


class IdentityBindingHandler(APIHandler):
    """``GET`` shows a user's binding; ``DELETE`` removes it (the next login binds anew)."""

    # `delete:users`: held by the facility's admin role, which has no `admin:users` (see casa_hub.auth.roles)
    @needs_scope("delete:users")
    async def get(self, user_name: str) -> None:
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, "No such user")
        bound = bound_identity(await user.get_auth_state())
        self.finish({"name": user.name, "identity": bound})

    @needs_scope("delete:users")
    async def delete(self, user_name: str) -> None:
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, "No such user")
        async with auth_state_lock(user.name):
            state = await user.get_auth_state()
            bound = bound_identity(state)
            if bound:
                state.pop(IDENTITY_KEY, None)
                await user.save_auth_state(state)
        actor = self.current_user.name if self.current_user is not None else "?"
        audit(self.log, "unbound", user.name, by=actor, sub=bound["sub"] if bound else "")
        self.set_status(204)
        self.finish()


def identity_handlers() -> list[tuple[str, type, dict[str, Any]]]:
    """The admin API for bindings (paths relative to the hub prefix)."""
    return [(r"/api/casa/identity/([^/]+)", IdentityBindingHandler, {})]
