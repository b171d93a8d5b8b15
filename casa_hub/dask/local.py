"""Dask Gateway with local processes, the embedded default backend: ``FacilityLocalBackend``.

It is dask-gateway-server's ``LocalBackend`` with casa_hub's defaults:

- schedulers and workers are started with the ``dask`` command of the gateway's own Python
  environment (``<env>/bin/dask scheduler`` / ``worker``; distributed no longer ships the
  ``dask-scheduler`` / ``dask-worker`` commands the upstream defaults name);
- by default they run as the gateway's own system user, like the notebooks of the demo (no
  isolation between users, so for one person's machine); ``run_as_user = True`` gives the upstream
  behaviour: each cluster runs as the Unix user of the same name, which needs root and such users.

Its siblings for batch systems are ``casa_hub.dask.slurm`` and ``casa_hub.dask.htcondor``. Select it
in the gateway's configuration (``casa-hub demo`` does: ``casa_hub/integrations/dask/embedded_gateway_config.py``)::

    c.DaskGateway.backend_class = "casa_hub.dask.local.FacilityLocalBackend"
    c.FacilityLocalBackend.clusters_directory = "/var/lib/dask-gateway/clusters"
    c.ClusterConfig.idle_timeout = 1800      # cull clusters idle for 30 minutes
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from dask_gateway_server.backends.local import LocalBackend, LocalClusterConfig
from dask_gateway_server.traitlets import Type
from traitlets import Bool, Integer, default


def dask_command(which: str) -> list[str]:
    """``[<this environment's bin>/dask, which]``: the scheduler or worker command."""
    return [str(Path(sys.executable).parent / "dask"), which]


class FacilityLocalClusterConfig(LocalClusterConfig):
    """Cluster settings of ``FacilityLocalBackend`` (``c.FacilityLocalClusterConfig.*`` or any
    ``c.ClusterConfig.*`` setting: worker_cores, worker_memory, idle_timeout, ...)."""

    @default("scheduler_cmd")
    def _scheduler_cmd_default(self) -> list[str]:
        return dask_command("scheduler")

    @default("worker_cmd")
    def _worker_cmd_default(self) -> list[str]:
        return dask_command("worker")


class FacilityLocalBackend(LocalBackend):
    """Clusters as local processes of the gateway's machine (``casa-hub demo``'s default)."""

    cluster_config_class = Type(
        "casa_hub.dask.local.FacilityLocalClusterConfig",
        klass="dask_gateway_server.backends.base.ClusterConfig",
        help="The cluster config class (per-cluster settings and their defaults).",
        config=True,
    )

    run_as_user = Bool(
        False,
        config=True,
        help="""Run each cluster's processes as the Unix user named like the cluster's owner
        (needs the gateway to run as root and such users to exist). False: as the gateway's own
        user, with no isolation between users, as the demo's notebooks run.""",
    )

    niceness = Integer(
        10,
        min=0,
        max=19,
        config=True,
        help="""Scheduling priority increment (``nice``) of the clusters' processes, so that on one
        machine a cluster starting or computing does not slow down the notebook servers and the
        hub. 0: the gateway's own priority.""",
    )

    def set_file_permissions(self, paths: list[str], username: str) -> None:
        if self.run_as_user:
            super().set_file_permissions(paths, username)

    def make_preexec_fn(self, cluster) -> Callable[[], None]:  # noqa: ANN001 - dask-gateway's Cluster
        niceness = self.niceness
        if self.run_as_user:
            upstream = super().make_preexec_fn(cluster)

            def preexec() -> None:  # pragma: no cover - runs in the child
                os.nice(niceness)
                upstream()

            return preexec
        workdir = cluster.state["workdir"]

        def preexec() -> None:  # pragma: no cover - runs in the child
            os.nice(niceness)
            os.chdir(workdir)

        return preexec
