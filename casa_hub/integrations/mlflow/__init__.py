"""MLflow: the integration (hub), the request-header provider (client) and the server's auth plugin."""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "MLflowIntegration": "integration",
    "CasaTokenHeaderProvider": "client",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
