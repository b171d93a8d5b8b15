"""The facility as the hub's pages present it: name, logo, support contact; and the templates.

``CasaFacility`` holds what the pages say about the facility (``c.CasaFacility.name = ...``).
``install_templates`` puts casa_hub's templates (sign-in, home, "My facility", spawn form, spawn
progress, error pages) on JupyterHub's template path and makes ``casa`` (the CasaFacility) a
template variable. The authenticator calls it when the hub starts, so sites add nothing; templates
in the site's own ``c.JupyterHub.template_paths`` still win over casa_hub's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import Config, Configurable

TEMPLATES = str(Path(__file__).resolve().parent / "templates")


class CasaFacility(Configurable):
    """What the hub's pages say about the facility."""

    name = Unicode(
        "Analysis Facility",
        config=True,
        help="The facility's name, shown in page titles, the navigation bar and on the sign-in page.",
    )

    logo_url = Unicode(
        "",
        config=True,
        help="""URL of the facility's logo (navigation bar and sign-in page). Empty: the hub's own
        logo at ``/hub/logo``, i.e. the file ``c.JupyterHub.logo_file``.""",
    )

    support_url = Unicode(
        "",
        config=True,
        help="""Where users get help (a web page or ``mailto:`` address), linked from every page and
        named in error messages. Empty: no support link.""",
    )

    tagline = Unicode(
        "Notebooks with your data, batch and Dask cluster, signed in with one account.",
        config=True,
        help="One sentence under the facility's name on the sign-in page.",
    )

    status_timeout = Float(
        5.0,
        config=True,
        help="""Seconds to wait for a service's live status (e.g. the Dask cluster) on the "My
        facility" page; a service that does not answer in time is shown as unavailable.""",
    )

    @property
    def support_is_mail(self) -> bool:
        return self.support_url.startswith("mailto:")


def facility(config: Config | None) -> CasaFacility:
    """The CasaFacility for a configuration (cheap: a handful of traits)."""
    return CasaFacility(config=config or Config())


def install_templates(app: Any) -> None:
    """Put casa_hub's templates on ``app.template_paths`` and ``casa`` into its template variables.

    Must run before the hub builds its Jinja environment (``init_tornado_settings``): the
    authenticator calls it when it is created. Paths the site configured stay first (a site's
    ``login.html`` wins); casa_hub's come before JupyterHub's own templates, which they extend.
    """
    if app is None or not hasattr(app, "template_paths") or not hasattr(app, "_template_paths_default"):
        return
    settings = facility(getattr(app, "config", None))
    hub_default = os.path.normpath(app._template_paths_default()[0])
    paths = [p for p in app.template_paths if os.path.normpath(p) != os.path.normpath(TEMPLATES)]
    normalized = [os.path.normpath(p) for p in paths]
    if hub_default not in normalized:
        paths.append(hub_default)
        normalized.append(hub_default)
    paths.insert(normalized.index(hub_default), TEMPLATES)
    app.template_paths = paths
    if "casa" not in app.template_vars:
        app.template_vars = {**app.template_vars, "casa": settings}
