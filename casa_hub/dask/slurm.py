"""Dask Gateway on Slurm, configured for the facility: ``FacilitySlurmBackend``.

dask-gateway-server's ``SlurmBackend`` submits a cluster's scheduler and workers with ``sbatch``
as the user (``sudo -u <user> dask-gateway-jobqueue-launcher``), so the gateway host needs sudo,
a Unix account per user with a home on the shared filesystem, and a Python environment for jobs
that every user can read. This subclass adds what a facility needs on top:

- ``job_venv``: the jobs' Python environment; the scheduler and workers run
  ``<job_venv>/bin/dask scheduler|worker`` (distributed 2026 has no ``dask-scheduler`` command);
- ``partition`` / ``account`` as site defaults (dask-gateway's own cluster settings);
- ``slurm_conf``: handed to ``sbatch``, ``scancel`` and ``squeue`` as ``SLURM_CONF``;
- a walltime per job (``--time``), so the batch system ends a job before its token;
- the user's storage token for XCache reads on each worker: minted per worker at its submission
  (``GatewayTokenMinter``, grant ``storage_grant``), written by the launcher as the user into that
  worker's own staging directory (mode 0700), exported to the worker as ``BEARER_TOKEN_FILE`` (a
  path) and removed when the worker stops. ``--deadline`` keeps a worker that waited too long in
  the queue from starting with a token that could not cover its walltime. The scheduler gets no
  facility token. With ``token_renewal`` the owner's client renews the workers' tokens over Dask
  (``casa_hub.dask.worker_renewal``): the walltime may then exceed the token lifetime, no ``--deadline``.

Example ``dask_gateway_config.py``::

    c.DaskGateway.backend_class = "casa_hub.dask.slurm.FacilitySlurmBackend"
    c.FacilitySlurmBackend.slurm_conf = "/etc/slurm/slurm.conf"
    c.FacilitySlurmClusterConfig.job_venv = "/opt/casa/venv"
    c.FacilitySlurmClusterConfig.partition = "dask"
    c.FacilitySlurmClusterConfig.worker_walltime = "04:00:00"
    c.CasaTokenIssuer.issuer_url = "https://hub.example.org/hub/casa-issuer"
    c.CasaTokenIssuer.key_dir = "/etc/casa/issuer-keys"        # read-only copy of the hub's keys
    c.CasaTokenIssuer.grants = {"xcache-worker": {...}}          # lifetime >= walltime + 300 s
    c.FacilitySlurmClusterConfig.storage_grant = "xcache-worker"
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend, SlurmClusterConfig
from dask_gateway_server.traitlets import Type
from traitlets import Instance, List, Unicode, default, validate

from casa_hub.dask.worker_tokens import (
    STORAGE_TOKEN_FILE,
    GatewayTokenMinter,
    TokenLifetimeError,
    check_covers,
    format_walltime,
    parse_walltime,
    slurm_time,
    token_renewal_trait,
)
from casa_hub.tokens.issuer import IssuerError


class FacilitySlurmClusterConfig(SlurmClusterConfig):
    """Dask cluster settings on the facility's Slurm."""

    job_venv = Unicode(
        "",
        config=True,
        help="""Python environment (a venv or conda prefix) the jobs run in, readable by every user
        and present on the compute nodes. Sets ``scheduler_cmd`` and ``worker_cmd`` to
        ``<job_venv>/bin/dask scheduler`` / ``worker`` unless those are set. Empty: ``dask`` from
        the jobs' PATH.""",
    )

    worker_walltime = Unicode(
        "04:00:00",
        config=True,
        help="""Walltime of each worker job (``--time``; ``HH:MM:SS``, ``D-HH:MM:SS`` or seconds).
        Tokens of ``storage_grant`` must live at least this long plus the minter's margin.""",
    )

    scheduler_walltime = Unicode(
        "",
        config=True,
        help="""Walltime of the scheduler job (``--time``). Empty: the partition's limit.""",
    )

    storage_grant = Unicode(
        "xcache",
        config=True,
        help="""Issuer grant of the storage token each worker gets as ``BEARER_TOKEN_FILE``
        (for XCache reads). Empty: workers get no facility token.""",
    )

    token_renewal = token_renewal_trait()

    casa_groups = List(
        Unicode(),
        help="""The user's groups when the cluster was created (set by the backend from the
        gateway's authenticator, not configurable): grants are minted for these groups.""",
    )

    @default("scheduler_cmd")
    def _default_scheduler_cmd(self) -> list[str]:
        return [self._dask(), "scheduler"]

    @default("worker_cmd")
    def _default_worker_cmd(self) -> list[str]:
        return [self._dask(), "worker"]

    def _dask(self) -> str:
        return os.path.join(self.job_venv, "bin", "dask") if self.job_venv else "dask"

    @validate("worker_walltime", "scheduler_walltime")
    def _validate_walltime(self, proposal: Any) -> str:
        value = proposal["value"]
        if value or proposal["trait"].name == "worker_walltime":
            parse_walltime(value)  # ValueError names the bad value
        return value


class FacilitySlurmBackend(SlurmBackend):
    """dask-gateway's SlurmBackend with the facility's job environment, walltimes and worker tokens."""

    cluster_config_class = Type(
        "casa_hub.dask.slurm.FacilitySlurmClusterConfig",
        klass="dask_gateway_server.backends.base.ClusterConfig",
        help="The cluster config class to use.",
        config=True,
    )

    slurm_conf = Unicode(
        "",
        config=True,
        help="""Path of ``slurm.conf`` given to ``sbatch``, ``scancel`` and ``squeue`` as
        ``SLURM_CONF``. Empty: Slurm's default (``/etc/slurm/slurm.conf``).""",
    )

    token_minter = Instance(GatewayTokenMinter, help="Mints the users' worker tokens.")

    @default("token_minter")
    def _default_token_minter(self) -> GatewayTokenMinter:
        return GatewayTokenMinter(parent=self, log=self.log)

    # ---- cluster creation: remember the user's groups, refuse walltimes tokens cannot cover -----

    async def process_cluster_options(self, user: Any, request: Any) -> tuple[Any, Any]:
        options, config = await super().process_cluster_options(user, request)
        config.casa_groups = sorted(user.groups)
        if config.storage_grant:
            try:
                self.token_minter.check_allowed(config.storage_grant, user.groups)
                if not config.token_renewal:
                    self.token_minter.check_grant_covers(config.storage_grant,
                                                         parse_walltime(config.worker_walltime))
            except (IssuerError, TokenLifetimeError, ValueError) as e:
                raise PublicException(str(e)) from None
        return options, config

    # ---- commands -------------------------------------------------------------------------------

    def _slurm_env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}

    def get_worker_staging_directory(self, cluster: Any, worker_name: str) -> str:
        """A worker's own directory (0700, beside the cluster's) holding its storage token."""
        return f"{self.get_staging_directory(cluster).rstrip('/')}.{worker_name}"

    def get_submit_cmd_env_stdin(self, cluster: Any, worker: Any = None) -> tuple[list[str], dict[str, str], str]:
        cmd, env, script = super().get_submit_cmd_env_stdin(cluster, worker)
        walltime = cluster.config.worker_walltime if worker else cluster.config.scheduler_walltime
        if walltime:
            cmd.append(f"--time={format_walltime(parse_walltime(walltime))}")
        cmd[1:1] = [f"--job-name=dask-{'worker' if worker else 'scheduler'}-{cluster.name}"]
        cmd.remove("--job-name=dask-gateway")
        env.update(self._slurm_env())  # for sbatch itself; not in --export
        if worker and cluster.config.storage_grant:
            token_file = os.path.join(self.get_worker_staging_directory(cluster, worker.name), STORAGE_TOKEN_FILE)
            lines = script.split("\n")
            # the launcher writes files with the user's umask; token clients want 0600
            lines[1:1] = [f"export BEARER_TOKEN_FILE={shlex.quote(token_file)}", 'chmod 600 "$BEARER_TOKEN_FILE"']
            script = "\n".join(lines)
        return cmd, env, script

    def get_stop_cmd_env(self, job_id: str) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().get_stop_cmd_env(job_id)
        return cmd, {**env, **self._slurm_env()}

    def get_status_cmd_env(self, job_ids: list[str]) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().get_status_cmd_env(job_ids)
        return cmd, {**env, **self._slurm_env()}

    # ---- workers: one token per worker, in the worker's own staging directory -------------------

    async def do_start_worker(self, worker: Any) -> Any:
        cluster = worker.cluster
        cmd, env, stdin = self.get_submit_cmd_env_stdin(cluster, worker)
        staging_dir, files = None, {}
        if cluster.config.storage_grant:
            walltime = parse_walltime(cluster.config.worker_walltime)
            minted = self.token_minter.mint(cluster.username, cluster.config.casa_groups, cluster.config.storage_grant)
            if not cluster.config.token_renewal:
                check_covers(minted.expires_at, walltime, minted.grant, self.token_minter.margin)
                # not started after this moment: it could not finish before its token expires
                cmd.append(f"--deadline={slurm_time(minted.expires_at - self.token_minter.margin)}")
            staging_dir = self.get_worker_staging_directory(cluster, worker.name)
            files = {STORAGE_TOKEN_FILE: minted.token}
            self.log.info("Worker %s of cluster %s: storage token jti=%s exp=%d", worker.name, cluster.name,
                          minted.claims["jti"], minted.expires_at)
        job_id = await self.start_job(cluster.username, cmd, env, stdin, staging_dir=staging_dir, files=files)
        self.log.info("Job %s submitted for worker %s", job_id, worker.name)
        yield {"job_id": job_id, "staging_dir": staging_dir}

    async def do_stop_worker(self, worker: Any) -> None:
        job_id = worker.state.get("job_id")
        if job_id is not None:
            await self.stop_job(worker.cluster.username, job_id, staging_dir=worker.state.get("staging_dir"))
