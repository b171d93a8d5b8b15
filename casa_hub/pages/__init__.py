"""The hub's pages: templates, the "My facility" page and its JSON API.

- ``handlers.py`` -- the page and API handlers; ``summary.py`` -- what "My facility" shows;
- ``facility_info.py`` -- ``CasaFacility`` (name, logo, support contact) and template installation;
- ``templates/`` -- the hub page templates (login, home, spawn form, errors).
"""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "CasaFacility": "facility_info",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
