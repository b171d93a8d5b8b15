"""Facility services a notebook is configured for: one module (or folder) per service.

Every integration extends ``base.Integration`` (its docstring lists the override points in order);
``checks.py`` holds the setting checks they share. A service's notebook-side and server-side pieces
live beside it (``mlflow/client.py``, ``mlflow/server_auth.py``, ``servicex/client_auth.py``), and
the hub side of Dask (pre-creating the user's cluster, the gateway as a hub service) is in ``dask/``.
"""

from __future__ import annotations

from casa_hub.common.lazy import lazy_exports

#: public names -> the module (in this package) that defines them; imported on first use
_EXPORTS = {
    "Contribution": "base",
    "Integration": "base",
    "IntegrationError": "base",
    "SpawnContext": "base",
    "CheckedIntegration": "base",
    "HTCondorIntegration": "htcondor",
    "MLflowIntegration": "mlflow.integration",
    "ServiceXIntegration": "servicex.integration",
    "TritonIntegration": "triton",
    "XCacheIntegration": "xcache",
    "DaskIntegration": "dask.integration",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
