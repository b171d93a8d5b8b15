"""``HTCondorBackend``: Dask Gateway clusters whose scheduler and workers are HTCondor jobs.

Written in the style of dask-gateway-server's jobqueue backends (``SlurmBackend``, ``PBSBackend``):
the base class owns the lifecycle, this class says how to submit (``get_submit_cmd_env_stdin``),
stop (``get_stop_cmd_env``) and query (``get_status_cmd_env``, ``parse_job_states``,
``parse_job_id``) jobs. What differs from its siblings is the identity:

- **The user's own compute token, no sudo.** Every ``condor_submit`` and ``condor_rm`` runs in the
  gateway process with a token of the user's ``compute_grant`` (``compute.*`` scopes, ``sub`` = the
  user) minted for that one command by the facility issuer, in a 0600 file named by
  ``_CONDOR_SCITOKENS_FILE``, with SCITOKENS as the only client authentication method. The schedd
  maps ``<issuer>,<user>`` to the user (``casa-hub site-config htcondor``), so jobs belong to the
  user: no shared pool identity, no local Unix account, and never the user's hub token. The
  command's environment is built from scratch (paths only), so nothing of the gateway's own
  environment (e.g. its JupyterHub service token) reaches ``condor_submit``.
- **Files, not values.** The job's secrets (the gateway's cluster token and TLS key, the worker's
  storage token) are files in a private directory of the gateway, listed in
  ``transfer_input_files`` and spooled to the schedd (``condor_submit -spool``); the local copies
  are deleted right after the submission. The submit description holds paths only.
- **Storage tokens valid for the worker's whole life.** Each worker gets its own storage token,
  minted at its submission; the grant's lifetime must cover ``worker_walltime`` plus a margin
  (checked when the cluster is created). HTCondor enforces the walltime
  (``allowed_job_duration``) and does not start a worker that waited so long that its token would
  expire before the walltime ends (``requirements`` with ``time()``; ``periodic_remove`` removes it
  from the queue). The scheduler gets no facility token.
- **The site's worker image and requirements** (container universe with ``container_image``, or
  ``+SingularityImage``), an **accounting group per user** (``accounting_group`` template and
  ``accounting_group_user``).

Queue status is read with ``condor_q`` under the gateway's own identity (READ access,
``status_environment``), never with a user's token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.jobqueue.base import JobQueueBackend, JobQueueClusterConfig
from dask_gateway_server.traitlets import MemoryLimit, Type
from traitlets import Dict, Enum, Instance, List, Unicode, default, validate

from casa_hub.common.files import write_private
from casa_hub.dask import htcondor_submit as hs
from casa_hub.dask.worker_tokens import (
    STORAGE_TOKEN_FILE,
    GatewayTokenMinter,
    TokenLifetimeError,
    parse_walltime,
    token_renewal_trait,
)
from casa_hub.tokens.grants import check_username
from casa_hub.tokens.issuer import IssuerError

JOB_SCRIPT = "casa-dask-job.sh"
ENV_FILE = "dask-gateway.env"
TLS_FILES = ("dask.crt", "dask.pem")


class HTCondorClusterConfig(JobQueueClusterConfig):
    """Dask cluster settings on the facility's HTCondor pool."""

    job_venv = Unicode(
        "",
        config=True,
        help="""Python environment inside the worker image holding dask and dask-gateway; sets
        ``scheduler_cmd``/``worker_cmd`` to ``<job_venv>/bin/dask scheduler|worker`` unless those are
        set. Empty: ``dask`` from the image's PATH.""",
    )

    image = Unicode("", config=True, help="""The worker image, e.g. ``docker://registry.example.org/casa/worker:2026.1``
        (container universe) or ``/cvmfs/unpacked.cern.ch/...`` (Singularity).""")

    image_kind = Enum(
        ["container", "singularity", "none"],
        "container",
        config=True,
        help="""How the image is requested: ``container`` (``universe = container``,
        ``container_image``), ``singularity`` (vanilla universe, ``+SingularityImage``) or ``none``
        (no image; the execute node's own environment).""",
    )

    requirements = Unicode("", config=True, help="""ClassAd expression every job must match, e.g.
        ``(OpSysAndVer == "AlmaLinux9") && (HasSingularity =?= true)``; checked with classad2.""")

    accounting_group = Unicode("", config=True, help="""HTCondor ``accounting_group``; ``{username}`` is
        replaced, e.g. ``group_physics.{username}``. ``accounting_group_user`` is always the user.""")

    worker_walltime = Unicode("04:00:00", config=True, help="""Walltime of each worker job
        (``allowed_job_duration``; ``HH:MM:SS`` or seconds). Tokens of ``storage_grant`` must live
        this long plus the minter's margin.""")

    scheduler_walltime = Unicode("08:00:00", config=True, help="Walltime of the scheduler job.")

    worker_disk = MemoryLimit("1 G", config=True, help="Disk requested by each job (``request_disk``).")

    storage_grant = Unicode("xcache", config=True, help="""Issuer grant of the storage token each worker
        gets as ``BEARER_TOKEN_FILE`` (XCache reads). Empty: workers get no facility token.""")

    token_renewal = token_renewal_trait()

    extra_submit = Dict(value_trait=Unicode(), config=True, help="""Further submit commands for every
        job (name -> one-line value), e.g. ``{"+ProjectName": '"CMS"'}``. Managed commands cannot
        be overridden.""")

    casa_groups = List(Unicode(), help="""The user's groups at cluster creation (set by the backend from
        the gateway's authenticator, not configurable): tokens are minted for these groups.""")

    @default("scheduler_cmd")
    def _default_scheduler_cmd(self) -> list[str]:
        return [os.path.join(self.job_venv, "bin", "dask") if self.job_venv else "dask", "scheduler"]

    @default("worker_cmd")
    def _default_worker_cmd(self) -> list[str]:
        return [os.path.join(self.job_venv, "bin", "dask") if self.job_venv else "dask", "worker"]

    @validate("requirements")
    def _validate_requirements(self, proposal: Any) -> str:
        return hs.check_expression(proposal["value"], "HTCondorClusterConfig.requirements") if proposal["value"] else ""

    @validate("worker_walltime", "scheduler_walltime")
    def _validate_walltime(self, proposal: Any) -> str:
        parse_walltime(proposal["value"])
        return proposal["value"]

    @validate("accounting_group")
    def _validate_accounting_group(self, proposal: Any) -> str:
        if not proposal["value"]:
            return ""
        try:
            hs.check_single_word(proposal["value"].format(username="user"), "accounting_group")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"HTCondorClusterConfig.accounting_group {proposal['value']!r}: {e}") from None
        return proposal["value"]


class HTCondorBackend(JobQueueBackend):
    """A backend for deploying Dask on an HTCondor pool, with the users' own tokens."""

    cluster_config_class = Type(
        "casa_hub.dask.htcondor.HTCondorClusterConfig",
        klass="dask_gateway_server.backends.base.ClusterConfig",
        help="The cluster config class to use.",
        config=True,
    )

    schedd_name = Unicode("", config=True, help="The schedd jobs go to (``-name``). Empty: the pool's default.")

    pool = Unicode("", config=True, help="The pool's central manager (``-pool``). Empty: ``COLLECTOR_HOST``.")

    condor_config = Unicode("", config=True, help="""HTCondor client configuration (``CONDOR_CONFIG``) of
        the commands, e.g. with ``AUTH_SSL_CLIENT_CAFILE``. Empty: HTCondor's default.""")

    compute_grant = Unicode("htcondor", config=True, help="""Issuer grant of the compute token
        (``compute.*`` scopes) that authenticates the user's ``condor_submit``/``condor_rm``.""")

    staging_root = Unicode(config=True, help="""Private directory of the gateway (mode 0700) where job files
        are prepared before ``condor_submit -spool`` copies them to the schedd.""")

    status_environment = Dict(value_trait=Unicode(), config=True, help="""Extra environment of ``condor_q``
        (the gateway's own READ-level identity, e.g. ``{"_CONDOR_SCITOKENS_FILE": "/etc/casa/gateway-read.token"}``).""")

    token_minter = Instance(GatewayTokenMinter, help="Mints the users' compute and storage tokens.")

    @default("token_minter")
    def _default_token_minter(self) -> GatewayTokenMinter:
        return GatewayTokenMinter(parent=self, log=self.log)

    @default("staging_root")
    def _default_staging_root(self) -> str:
        return os.path.join(os.getcwd(), "htcondor-jobs")

    @default("submit_command")
    def _default_submit_command(self) -> str:
        return shutil.which("condor_submit") or "condor_submit"

    @default("cancel_command")
    def _default_cancel_command(self) -> str:
        return shutil.which("condor_rm") or "condor_rm"

    @default("status_command")
    def _default_status_command(self) -> str:
        return shutil.which("condor_q") or "condor_q"

    # ---- cluster creation ------------------------------------------------------------------------

    async def process_cluster_options(self, user: Any, request: Any) -> tuple[Any, Any]:
        options, config = await super().process_cluster_options(user, request)
        config.casa_groups = sorted(user.groups)
        try:
            check_username(user.name)
            self.token_minter.check_allowed(self.compute_grant, user.groups)
            if config.storage_grant:
                self.token_minter.check_allowed(config.storage_grant, user.groups)
                if not config.token_renewal:
                    self.token_minter.check_grant_covers(config.storage_grant,
                                                         parse_walltime(config.worker_walltime))
        except (IssuerError, TokenLifetimeError, ValueError) as e:
            raise PublicException(str(e)) from None
        return options, config

    # ---- paths -----------------------------------------------------------------------------------

    def get_staging_directory(self, cluster: Any) -> str:
        return os.path.join(self.staging_root, cluster.name)

    def get_tls_paths(self, cluster: Any) -> tuple[str, str]:
        return TLS_FILES  # transferred into the job's sandbox, its working directory

    def job_directory(self, cluster: Any, worker: Any = None) -> Path:
        return Path(self.get_staging_directory(cluster)) / (worker.name if worker else "scheduler")

    def _schedd_args(self) -> list[str]:
        args = []
        if self.schedd_name:
            args += ["-name", self.schedd_name]
        if self.pool:
            args += ["-pool", self.pool]
        return args

    def _base_env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if self.condor_config:
            env["CONDOR_CONFIG"] = self.condor_config
        return env

    def credential_env(self, token_file: str) -> dict[str, str]:
        """How an HTCondor client presents the user's compute token: SciTokens only, from the file."""
        return {"_CONDOR_SCITOKENS_FILE": token_file, "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS"}

    # ---- the jobqueue interface ------------------------------------------------------------------

    def prepare_job(self, cluster: Any, worker: Any = None) -> hs.JobSpec:
        """Write the job's files (0600, in a 0700 directory) and describe the job."""
        config = cluster.config
        job_dir = self.job_directory(cluster, worker)
        for directory in (Path(self.staging_root), job_dir.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        job_dir.mkdir(mode=0o700)
        role = "worker" if worker else "scheduler"
        env = self.get_worker_env(cluster) if worker else self.get_scheduler_env(cluster)
        files = {ENV_FILE: hs.env_file(env), "dask.crt": cluster.tls_cert.decode(), "dask.pem": cluster.tls_key.decode()}
        not_after, token_name = None, None
        walltime = parse_walltime(config.worker_walltime if worker else config.scheduler_walltime)
        if worker and config.storage_grant:
            minted = self.token_minter.mint(cluster.username, config.casa_groups, config.storage_grant)
            self.log.info("Worker %s of cluster %s: storage token jti=%s exp=%d", worker.name, cluster.name,
                          minted.claims["jti"], minted.expires_at)
            if not config.token_renewal:  # renewed over Dask otherwise: no start deadline
                not_after = minted.expires_at - walltime - self.token_minter.margin
            token_name = STORAGE_TOKEN_FILE
            files[token_name] = minted.token
        for name, content in files.items():
            write_private(job_dir / name, content)
        command = (self.get_worker_command(cluster, worker.name) if worker else self.get_scheduler_command(cluster))
        script = hs.job_script(role, worker.name if worker else cluster.name, cluster.name,
                               config.worker_setup if worker else config.scheduler_setup, command, token_name)
        (job_dir / JOB_SCRIPT).write_text(script)
        os.chmod(job_dir / JOB_SCRIPT, 0o700)
        return hs.JobSpec(
            executable=str(job_dir / JOB_SCRIPT), input_files=[str(job_dir / n) for n in files],
            cpus=config.worker_cores if worker else config.scheduler_cores,
            memory_bytes=config.worker_memory if worker else config.scheduler_memory,
            disk_bytes=config.worker_disk, walltime=walltime, batch_name=f"dask-gateway-{cluster.name}",
            cluster_name=cluster.name, role=role, username=cluster.username, image=config.image,
            image_kind=config.image_kind, requirements=config.requirements,
            accounting_group=config.accounting_group.format(username=cluster.username),
            not_after=not_after, extra=dict(config.extra_submit),
        )

    def get_submit_cmd_env_stdin(self, cluster: Any, worker: Any = None) -> tuple[list[str], dict[str, str], str]:
        description = hs.submit_description(self.prepare_job(cluster, worker))
        cmd = [self.submit_command, "-terse", "-spool", *self._schedd_args()]
        return cmd, self._base_env(), str(description)

    def get_stop_cmd_env(self, job_id: str) -> tuple[list[str], dict[str, str]]:
        return [self.cancel_command, *self._schedd_args(), job_id], self._base_env()

    def get_status_cmd_env(self, job_ids: list[str]) -> tuple[list[str], dict[str, str]]:
        cmd = [self.status_command, *self._schedd_args(), "-allusers", "-af:j", "JobStatus", *job_ids]
        return cmd, {**self._base_env(), **self.status_environment}

    def parse_job_states(self, stdout: str) -> dict[str, bool]:
        return hs.parse_states(stdout)

    def parse_job_id(self, stdout: str) -> str:
        return hs.parse_terse(stdout)

    # ---- running the commands with the user's compute token --------------------------------------

    async def run_as_user(self, cluster: Any, cmd: list[str], env: dict[str, str],
                          stdin: str | None = None) -> tuple[int, str, str]:
        """Run ``cmd`` authenticated as the cluster's user by a compute token minted for this call."""
        minted = self.token_minter.mint(cluster.username, cluster.config.casa_groups, self.compute_grant)
        directory = Path(self.get_staging_directory(cluster))
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        token_file = write_private(directory / f"compute-{secrets.token_hex(8)}.token", minted.token)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, env={**env, **self.credential_env(str(token_file))}, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        finally:
            token_file.unlink(missing_ok=True)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def _submit(self, cluster: Any, worker: Any = None) -> str:
        cmd, env, stdin = self.get_submit_cmd_env_stdin(cluster, worker)
        try:
            code, stdout, stderr = await self.run_as_user(cluster, cmd, env, stdin)
        finally:
            # -spool copied the files to the schedd: the gateway keeps no job secret
            shutil.rmtree(self.job_directory(cluster, worker), ignore_errors=True)
        if code != 0:
            raise Exception(f"Failed to submit job to HTCondor\n  exit_code: {code}\n  stderr: {stderr[-1000:]}")
        return self.parse_job_id(stdout)

    async def _remove(self, cluster: Any, job_id: str) -> None:
        cmd, env = self.get_stop_cmd_env(job_id)
        code, stdout, stderr = await self.run_as_user(cluster, cmd, env)
        if code != 0 and "Couldn't find" not in stdout + stderr and "not found" not in stdout + stderr:
            raise Exception(f"Failed to remove HTCondor job {job_id}: {stderr[-500:]}")

    async def do_start_cluster(self, cluster: Any) -> Any:
        job_id = await self._submit(cluster)
        self.log.info("Job %s submitted for cluster %s", job_id, cluster.name)
        yield {"job_id": job_id}

    async def do_stop_cluster(self, cluster: Any) -> None:
        try:
            job_id = cluster.state.get("job_id")
            if job_id is not None:
                await self._remove(cluster, job_id)
        finally:
            shutil.rmtree(self.get_staging_directory(cluster), ignore_errors=True)

    async def do_start_worker(self, worker: Any) -> Any:
        job_id = await self._submit(worker.cluster, worker)
        self.log.info("Job %s submitted for worker %s", job_id, worker.name)
        yield {"job_id": job_id}

    async def do_stop_worker(self, worker: Any) -> None:
        job_id = worker.state.get("job_id")
        if job_id is not None:
            await self._remove(worker.cluster, job_id)
