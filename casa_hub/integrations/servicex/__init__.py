"""ServiceX: the integration (hub) and the client's authentication plugin."""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "ServiceXIntegration": "integration",
    "CasaFacilityAuth": "client_auth",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
