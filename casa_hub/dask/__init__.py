"""Per-user Dask clusters.

- notebook side: ``get_client()`` / ``get_cluster()`` attach to the cluster the hub created when the
  server started (``client.py``); the notebook's renewed storage token reaches the workers of every
  backend over Dask (``worker_renewal.py``); ``FacilitySLURMCluster`` / ``FacilityHTCondorCluster`` keep the
  scheduler in the notebook (``jobqueue.py``);
- hub side: pre-creation (``casa_hub.integrations.dask.integration``), the hub's credential for it
  (``credentials.py``), a small gateway API client (``gateway_api.py``), hub configuration and the
  embedded gateway (``hub_config.py``, ``embedded_gateway_config.py``);
- Dask Gateway backends configured for the facility: ``local.py`` (embedded default), ``slurm.py``,
  ``htcondor.py``.

In a notebook::

    from casa_hub.dask import get_client
    client = get_client()          # the cluster the hub created when the server started

Importing this package does not import dask (the hub imports its other modules).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public names, imported from their module on first use
_LAZY = {
    "NoClusterError": "client",
    "cluster_name": "client",
    "get_client": "client",
    "get_cluster": "client",
    "keep_worker_tokens_fresh": "worker_renewal",
    "FacilitySLURMCluster": "jobqueue",
    "FacilityHTCondorCluster": "jobqueue",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
