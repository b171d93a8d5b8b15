"""In the notebook: attach to the Dask cluster the hub created when the server started.

The hub hands the notebook the gateway's address (``DASK_GATEWAY__ADDRESS``, ...), the cluster's
name (``CASA_DASK_CLUSTER``) and a dask config file (``DASK_CONFIG``); the notebook authenticates
to the gateway with its own ``JUPYTERHUB_API_TOKEN``.
"""

from __future__ import annotations

import os
from typing import Any

CLUSTER_ENV = "CASA_DASK_CLUSTER"
CONFIG_KEY = "casa-hub.dask.cluster"


class NoClusterError(RuntimeError):
    """There is no pre-created cluster to attach to; the message says why and what to do."""


_HOW_TO_CREATE = (
    "Create one yourself with `dask_gateway.Gateway().new_cluster()` (same gateway and options), "
    "or restart your server from the hub's home page to get a new one."
)


def cluster_name() -> str | None:
    """The pre-created cluster's name: ``$CASA_DASK_CLUSTER``, else the dask config
    ``casa-hub.dask.cluster``; None when the hub created none."""
    name = os.environ.get(CLUSTER_ENV)
    if name:
        return name
    import dask.config

    return dask.config.get(CONFIG_KEY, None) or None


def get_cluster(name: str | None = None, **gateway_kwargs: Any) -> Any:
    """The ``dask_gateway.GatewayCluster`` the hub created for this server (or ``name``); waits
    while it is still starting. Raises NoClusterError when there is none or it has stopped."""
    from aiohttp import ClientResponseError
    from dask_gateway import GatewayCluster
    from dask_gateway.client import GatewayClusterError

    name = name or cluster_name()
    if not name:
        raise NoClusterError(
            f"No Dask cluster was created for this server (${CLUSTER_ENV} is not set: the facility "
            f"has no Dask Gateway configured, or it could not create one when the server started). "
            f"{_HOW_TO_CREATE}"
        )
    try:
        return GatewayCluster.from_name(name, **gateway_kwargs)
    except (ValueError, GatewayClusterError) as e:  # 404: unknown; stopped or failed
        raise NoClusterError(
            f"The Dask cluster {name} is no longer available ({e}); it stops with your server and "
            f"when it has been idle for a while. {_HOW_TO_CREATE}"
        ) from None
    except ClientResponseError as e:
        if e.status not in (401, 403):
            raise
        raise NoClusterError(
            f"The Dask Gateway refused access to the cluster {name} (HTTP {e.status}): a cluster "
            f"can only be used by the user it belongs to. {_HOW_TO_CREATE}"
        ) from None


def get_client(name: str | None = None, *, set_as_default: bool = True, renew_worker_tokens: bool = True,
               **gateway_kwargs: Any) -> Any:
    """A ``distributed.Client`` of the cluster the hub created for this server (see
    ``get_cluster``). ``gateway_kwargs`` go to ``dask_gateway.Gateway`` (address, auth, ...).

    With ``renew_worker_tokens`` (and a storage token in ``$CASA_TOKEN_DIR``), each renewal of the
    notebook's storage token is pushed to the cluster's workers
    (``casa_hub.dask.worker_renewal.keep_worker_tokens_fresh``), so they keep reading for as long as the
    notebook runs."""
    client = get_cluster(name, **gateway_kwargs).get_client(set_as_default=set_as_default)
    if renew_worker_tokens and not getattr(client, "asynchronous", False):
        from casa_hub.dask.worker_renewal import keep_worker_tokens_fresh

        keep_worker_tokens_fresh(client)
    return client
