"""The hub's "My facility" page and its JSON twin.

- ``GET /hub/casa/facility``: the signed-in user's grants (audience, scopes, time to expiry), the
  services their notebook is configured for, the Dask cluster and a "Renew tokens now" button
  (which calls the token broker from the page, with the session's XSRF token).
- ``GET /hub/api/casa/facility``: the same as JSON for the calling user (token or session);
  ``GET /hub/api/casa/facility/<name>`` for one named user. Callers need the broker's scope
  ``custom:casa-tokens:renew`` for that user (a user's session and servers have it for themselves
  only), or ``admin:auth_state`` for that user. No token value is ever in either.

``CasaOIDCAuthenticator.get_handlers`` adds these handlers; the templates are installed when the
authenticator is created (``casa_hub.pages.facility_info.install_templates``).
"""

from __future__ import annotations

import json
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.user import User
from tornado import web

from casa_hub.pages.facility_info import facility
from casa_hub.pages.summary import facility_summary
from casa_hub.tokens.broker import RENEW_SCOPE


def may_read(handler: BaseHandler, username: str) -> bool:
    """Whether the caller may read ``username``'s facility summary."""
    return handler.has_scope(f"{RENEW_SCOPE}!user={username}") or handler.has_scope(
        f"admin:auth_state!user={username}"
    )


class FacilityPageHandler(BaseHandler):
    """``/hub/casa/facility``: the signed-in user's own "My facility" page."""

    @web.authenticated
    async def get(self) -> None:
        user = self.current_user
        if not isinstance(user, User):
            raise web.HTTPError(403, "This page is for users of the facility.")
        settings = facility(self.config)
        summary = await facility_summary(user, self.authenticator.token_issuer, settings)
        html = await self.render_template(
            "casa_facility.html",
            summary=summary,
            summary_json=json.dumps(summary),
            can_renew=self.has_scope(f"{RENEW_SCOPE}!user={user.name}"),
        )
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


class FacilityAPIHandler(APIHandler):
    """``/hub/api/casa/facility[/<name>]``: the summary as JSON."""

    async def get(self, name: str | None = None) -> None:
        caller = self.current_user
        if caller is None:
            raise web.HTTPError(403, "Sign in, or send a token, to read a facility summary.")
        if name is None:
            if not isinstance(caller, User):
                raise web.HTTPError(403, "Only users have a facility summary; name the user in the URL.")
            name = caller.name
        if not may_read(self, name):
            raise web.HTTPError(403, f"This credential may not read {name}'s facility summary.")
        user = self.find_user(name)
        if user is None:
            raise web.HTTPError(404, f"No user named {name}.")
        summary = await facility_summary(user, self.authenticator.token_issuer, facility(self.config))
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(summary))


def page_handlers() -> list[tuple[str, type, dict[str, Any]]]:
    """Handlers to add to the hub (paths relative to the hub prefix)."""
    return [
        (r"/casa/facility/?", FacilityPageHandler, {}),
        (r"/api/casa/facility/?", FacilityAPIHandler, {}),
        (r"/api/casa/facility/([^/]+)", FacilityAPIHandler, {}),
    ]
