"""The hub side of the per-user Dask cluster.

- ``integration.py`` -- ``DaskIntegration``: create (or reuse) the user's cluster before the notebook starts;
- ``credentials.py`` -- the hub's short-lived, gateway-only token for that;
- ``gateway_api.py`` -- a small client of the gateway's REST API;
- ``gateway_service.py`` -- Dask Gateway as a JupyterHub service (``add_embedded_gateway``,
  ``enable_gateway_access``); ``embedded_gateway_config.py`` -- that gateway's own config file.

What runs outside the hub (notebook helpers, gateway backends) is in ``casa_hub.dask``.
"""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "DaskIntegration": "integration",
    "add_embedded_gateway": "gateway_service",
    "enable_gateway_access": "gateway_service",
    "gateway_scope": "credentials",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
