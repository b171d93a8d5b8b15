"""Dask clusters with the scheduler in the notebook and workers in the facility's batch system:
``FacilitySLURMCluster`` and ``FacilityHTCondorCluster`` (dask-jobqueue subclasses).

Both are preconfigured from the site's dask configuration (section ``casa.jobqueue.slurm`` or
``casa.jobqueue.htcondor``, e.g. in ``/etc/dask/casa.yaml`` of the notebook image; keyword
arguments win; dask-jobqueue's own ``jobqueue.slurm`` / ``jobqueue.htcondor`` settings apply as
usual) and add what a facility needs:

- **TLS** between scheduler and workers (``Security.temporary()``) unless ``tls: false``;
- **a storage token per worker job**, fetched from the hub's token broker with the notebook's own
  credentials (``JUPYTERHUB_API_TOKEN``; the broker only ever returns the caller's tokens) when the
  job is submitted, written to a 0600 file and given to the worker as ``BEARER_TOKEN_FILE`` (a
  path). Its lifetime must cover the job's walltime (``TokenLifetimeError`` otherwise), and a job
  that waited too long in the queue does not start (Slurm ``--deadline``; HTCondor
  ``requirements``/``periodic_remove``), so a worker never holds an expired token. The file is
  removed when the worker stops;
- **no hub credential in jobs**: Slurm jobs get only the variables of ``job_environment``
  (``--export``), HTCondor jobs only what the submit description sets (``getenv`` is off);
- HTCondor only: the site's worker **image** (container universe, or ``+SingularityImage``),
  **requirements**, the **accounting group** per user, the scheduler's **contact address** (the
  notebook's address as the execute nodes see it), and ``condor_submit``/``condor_rm`` run with the
  user's own **compute token** (``SCITOKENS_FILE``) and an environment of paths only.

Settings (dask config keys under ``casa.jobqueue.<slurm|htcondor>``, or keyword arguments with
``_`` for ``-``): ``storage-grant`` (``xcache``; empty: no token), ``token-dir`` (where job token
files live; Slurm: on the shared filesystem, default ``~/.casa/dask-jobs``), ``token-margin``
(300 s), ``token-renewal`` (false; true: the notebook renews the workers' tokens over Dask with
``casa_hub.dask.keep_worker_tokens_fresh(client)``, so a token need not cover the walltime), ``tls`` (true), ``job-environment`` (Slurm, ``[PATH, LANG]``); HTCondor also ``image``,
``image-kind`` (``container`` | ``singularity``), ``requirements``, ``accounting-group`` (template
with ``{username}``), ``walltime`` (``04:00:00``), ``contact-address``, ``scheduler-port`` and
``compute-token-file`` (default ``$CASA_TOKEN_DIR/htcondor.token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import dask
from dask_jobqueue.htcondor import HTCondorCluster, HTCondorJob
from dask_jobqueue.slurm import SLURMCluster, SLURMJob
from distributed.security import Security

from casa_hub.common.classad import classad_string
from casa_hub.common.files import token_file_name, write_private
from casa_hub.dask.worker_tokens import (
    DEFAULT_MARGIN,
    STORAGE_TOKEN_FILE,
    check_covers,
    format_walltime,
    latest_start,
    parse_walltime,
    slurm_time,
    token_expiry,
)
from casa_hub.tokens.renewal.broker_client import hub_ssl_options, request_token

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_UNSET = object()


class BrokerTokenSource:
    """Fresh facility tokens for the notebook's own user from the hub's broker."""

    def __init__(self, api_url: str | None = None, api_token: str | None = None,
                 ssl: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        self.api_url = api_url or os.environ.get("JUPYTERHUB_API_URL", "")
        self._api_token = api_token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.ssl = hub_ssl_options() if ssl is None else ssl
        self.timeout = timeout
        if not self.api_url or not self._api_token:
            raise ValueError("the hub's broker needs JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN "
                             "(set in a notebook started by the hub)")

    def __repr__(self) -> str:
        return f"BrokerTokenSource(api_url={self.api_url!r})"

    async def fetch(self, grant: str) -> str:
        """A new token of ``grant`` (BrokerError if the hub refuses or cannot be reached)."""
        return await request_token(self.api_url, self._api_token, grant, self.timeout, time.time(), self.ssl)


def site_setting(kind: str, key: str, value: Any = _UNSET, default: Any = None) -> Any:
    """``value`` if given, else dask config ``casa.jobqueue.<kind>.<key>``, else ``default``."""
    if value is not _UNSET and value is not None:
        return value
    return dask.config.get(f"casa.jobqueue.{kind}.{key}", default=default)


def _private_dir(base: str | os.PathLike[str], prefix: str) -> Path:
    base = Path(os.path.expanduser(os.path.expandvars(str(base))))
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


class _JobToken:
    """One job's storage token file: fetched at submission, removed when the job stops."""

    def __init__(self, job_name: str, grant: str, token_dir: str | None, source: Any, walltime: int,
                 margin: int, renewed: bool = False) -> None:
        self.grant, self.source, self.walltime, self.margin = grant, source, walltime, margin
        self.renewed = renewed  # renewed over Dask (worker_renewal): need not cover the walltime
        safe = _SAFE_NAME.sub("_", str(job_name)) or "job"
        self.path = Path(token_dir or ".") / f"{safe}.{STORAGE_TOKEN_FILE}"
        self.expires_at = 0

    async def fetch(self) -> None:
        token = await self.source.fetch(self.grant)
        expires_at = token_expiry(token)
        if not self.renewed:
            check_covers(expires_at, self.walltime, self.grant, self.margin)
        write_private(self.path, token)
        self.expires_at = expires_at

    @property
    def latest_start(self) -> int:
        return latest_start(self.expires_at, self.walltime, self.margin)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


async def _run(cmd: list[str], env: dict[str, str]) -> str:
    """Run a batch command with exactly ``env``; its stdout, or RuntimeError with its stderr."""
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    return out.decode(errors="replace")


class _ClusterFilesMixin:
    """A cluster's private directory (job token files, worker TLS files), removed on close."""

    _casa_dir: Path

    def _casa_remove_files(self) -> None:
        for key in ("ca_file", "cert", "key"):  # dask-jobqueue's temporary TLS files, if any
            handle = getattr(self, f"_job_{key}", None)
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        shutil.rmtree(self._casa_dir, ignore_errors=True)

    async def _close(self) -> None:
        try:
            await super()._close()  # type: ignore[misc]
        finally:
            self._casa_remove_files()


# ---- Slurm ----------------------------------------------------------------------------------------


class FacilitySLURMJob(SLURMJob):
    """A dask-jobqueue Slurm job with its own storage token and no notebook environment."""

    def __init__(self, scheduler: Any = None, name: Any = None, *, storage_grant: str = "",
                 token_dir: str | None = None, token_source: Any = None, token_margin: int = DEFAULT_MARGIN,
                 token_renewal: bool = False,
                 job_environment: tuple[str, ...] = ("PATH", "LANG"), walltime: str | None = None,
                 job_script_prologue: list[str] | None = None, job_extra_directives: list[str] | None = None,
                 **kwargs: Any) -> None:
        if walltime is None:
            walltime = dask.config.get("jobqueue.slurm.walltime")
        seconds = parse_walltime(walltime)
        prologue = list(job_script_prologue or dask.config.get("jobqueue.slurm.job-script-prologue") or [])
        directives = list(job_extra_directives or dask.config.get("jobqueue.slurm.job-extra-directives") or [])
        # only these variables of the notebook reach the job (never JUPYTERHUB_API_TOKEN & co)
        directives.append(f"--export={','.join(job_environment) or 'NIL'}")
        self.casa_token = None
        if storage_grant:
            self.casa_token = _JobToken(name, storage_grant, token_dir, token_source, seconds, token_margin,
                                        token_renewal)
            prologue.insert(0, f"export BEARER_TOKEN_FILE={shlex.quote(str(self.casa_token.path))}")
        super().__init__(scheduler, name, walltime=format_walltime(seconds), job_script_prologue=prologue,
                         job_extra_directives=directives, **kwargs)

    async def start(self) -> None:
        if self.casa_token is not None:
            await self.casa_token.fetch()
            if not self.casa_token.renewed:
                # Slurm does not start the job once it could not end before its token expires
                deadline = slurm_time(self.casa_token.expires_at - self.casa_token.margin)
                self.job_header += f"\n#SBATCH --deadline={deadline}"
        await super().start()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.casa_token is not None:
                self.casa_token.remove()


class FacilitySLURMCluster(_ClusterFilesMixin, SLURMCluster):
    """``SLURMCluster`` for the facility: TLS, a storage token per worker, no hub credential in jobs.

    >>> cluster = FacilitySLURMCluster(cores=1, memory="2GB")   # site defaults from dask config
    >>> cluster.scale(2)
    """

    job_cls = FacilitySLURMJob

    def __init__(self, *, storage_grant: str | None = None, token_dir: str | None = None,
                 token_source: Any = None, token_margin: int | None = None, token_renewal: bool | None = None,
                 tls: bool | None = None,
                 job_environment: list[str] | None = None, **kwargs: Any) -> None:
        kind = "slurm"
        grant = site_setting(kind, "storage-grant", storage_grant, "xcache")
        base = site_setting(kind, "token-dir", token_dir, "~/.casa/dask-jobs")
        self._casa_dir = _private_dir(base, "cluster-")
        weakref.finalize(self, shutil.rmtree, str(self._casa_dir), True)
        if grant and token_source is None:
            token_source = BrokerTokenSource()
        if site_setting(kind, "tls", tls, True) and kwargs.get("security") is None:
            kwargs["security"] = Security.temporary()
            # worker certificates are written here; Slurm jobs read them on the shared filesystem
            kwargs.setdefault("shared_temp_directory", str(self._casa_dir))
        try:
            super().__init__(
                storage_grant=grant, token_dir=str(self._casa_dir), token_source=token_source,
                token_margin=int(site_setting(kind, "token-margin", token_margin, DEFAULT_MARGIN)),
                token_renewal=bool(site_setting(kind, "token-renewal", token_renewal, False)),
                job_environment=tuple(site_setting(kind, "job-environment", job_environment, ["PATH", "LANG"])),
                **kwargs,
            )
        except BaseException:
            self._casa_remove_files()
            raise


# ---- HTCondor -------------------------------------------------------------------------------------

TLS_FILES = {"ca_file": "casa-dask-ca.pem", "cert": "casa-dask-worker.pem", "key": "casa-dask-worker.key"}


class FacilityHTCondorJob(HTCondorJob):
    """A dask-jobqueue HTCondor job: site image, requirements, accounting group, own storage token,
    submitted and removed with the user's compute token."""

    def __init__(self, scheduler: Any = None, name: Any = None, *, storage_grant: str = "",
                 token_dir: str | None = None, token_source: Any = None, token_margin: int = DEFAULT_MARGIN,
                 token_renewal: bool = False, walltime: str = "04:00:00", image: str = "", image_kind: str = "container",
                 requirements: str = "", accounting_group: str = "", username: str = "",
                 compute_token_file: str = "", transfer_files: tuple[str, ...] = (),
                 job_extra_directives: dict[str, Any] | None = None,
                 job_script_prologue: list[str] | None = None, **kwargs: Any) -> None:
        seconds = parse_walltime(walltime)
        self.casa_compute_token_file = compute_token_file
        directives: dict[str, Any] = dict(
            job_extra_directives or dask.config.get("jobqueue.htcondor.job-extra-directives") or {})
        inputs = list(transfer_files)
        prologue = list(job_script_prologue or dask.config.get("jobqueue.htcondor.job-script-prologue") or [])
        self.casa_token = None
        if storage_grant:
            self.casa_token = _JobToken(name, storage_grant, token_dir, token_source, seconds, token_margin,
                                        token_renewal)
            inputs.append(str(self.casa_token.path))
            # transferred into the sandbox, which is the job's working directory
            prologue.insert(0, f'export BEARER_TOKEN_FILE="$PWD/{self.casa_token.path.name}"')
        if image_kind == "singularity":
            directives["MY.SingularityImage"] = classad_string(image, "image") if image else None
        elif image:
            directives.update({"universe": "container", "container_image": image})
        if inputs:
            directives.update({"should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT_OR_EVICT",
                               "transfer_input_files": ", ".join(inputs)})
        if accounting_group:
            directives["accounting_group"] = accounting_group.format(username=username)
        if username:
            directives["accounting_group_user"] = username
        directives["allowed_job_duration"] = seconds
        self.casa_requirements = requirements
        if requirements:
            directives["requirements"] = requirements
        directives = {k: v for k, v in directives.items() if v is not None}
        super().__init__(scheduler, name, job_extra_directives=directives, job_script_prologue=prologue, **kwargs)

    def casa_command_env(self) -> dict[str, str]:
        """The environment of ``condor_submit`` and ``condor_rm``: paths only, the compute token
        as ``SCITOKENS_FILE``, SciTokens as the only client authentication method."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.path.expanduser("~")}
        if os.environ.get("CONDOR_CONFIG"):
            env["CONDOR_CONFIG"] = os.environ["CONDOR_CONFIG"]
        if self.casa_compute_token_file:
            env["_CONDOR_SCITOKENS_FILE"] = self.casa_compute_token_file
            env["_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS"] = "SCITOKENS"
        return env

    async def start(self) -> None:
        if self.casa_token is not None and self.casa_token.renewed:
            await self.casa_token.fetch()
        elif self.casa_token is not None:
            await self.casa_token.fetch()
            not_after = self.casa_token.latest_start
            # not matched, and removed while idle, once it could not end before its token expires
            window = f"(time() <= {not_after})"
            reqs = self.casa_requirements
            self.job_header_dict["requirements"] = f"({reqs}) && {window}" if reqs else window
            self.job_header_dict["periodic_remove"] = f"(JobStatus == 1) && (time() > {not_after})"
        await super().start()

    async def _submit_job(self, script_filename: str) -> str:
        return await _run([*shlex.split(self.submit_command), script_filename], self.casa_command_env())

    async def close(self) -> None:
        try:
            if self.job_id:
                try:
                    await _run([*shlex.split(self.cancel_command), self.job_id], self.casa_command_env())
                except RuntimeError:
                    pass  # the job is gone already
        finally:
            if self.casa_token is not None:
                self.casa_token.remove()


class FacilityHTCondorCluster(_ClusterFilesMixin, HTCondorCluster):
    """``HTCondorCluster`` for the facility (see the module docstring).

    >>> cluster = FacilityHTCondorCluster(cores=1, memory="2GB", disk="1GB")  # site defaults from config
    >>> cluster.scale(2)
    """

    job_cls = FacilityHTCondorJob

    def __init__(self, *, storage_grant: str | None = None, token_dir: str | None = None,
                 token_source: Any = None, token_margin: int | None = None, token_renewal: bool | None = None,
                 tls: bool | None = None,
                 image: str | None = None, image_kind: str | None = None, requirements: str | None = None,
                 accounting_group: str | None = None, walltime: str | None = None,
                 contact_address: str | None = None, scheduler_port: int | None = None,
                 compute_token_file: str | None = None, **kwargs: Any) -> None:
        kind = "htcondor"
        grant = site_setting(kind, "storage-grant", storage_grant, "xcache")
        self._casa_dir = _private_dir(site_setting(kind, "token-dir", token_dir, "~/.casa/dask-jobs"), "cluster-")
        weakref.finalize(self, shutil.rmtree, str(self._casa_dir), True)
        if grant and token_source is None:
            token_source = BrokerTokenSource()
        compute = site_setting(kind, "compute-token-file", compute_token_file, "")
        if not compute and os.environ.get("CASA_TOKEN_DIR"):
            compute = os.path.join(os.environ["CASA_TOKEN_DIR"], token_file_name("htcondor"))
        if site_setting(kind, "tls", tls, True) and kwargs.get("security") is None:
            kwargs["security"] = Security.temporary()
        # the workers' TLS files (written by _get_worker_security) travel with each job
        transfer = tuple(str(self._casa_dir / n) for n in TLS_FILES.values()) if kwargs.get("security") else ()
        options = dict(kwargs.pop("scheduler_options", None) or
                       dask.config.get("jobqueue.htcondor.scheduler-options", {}) or {})
        contact = site_setting(kind, "contact-address", contact_address, "")
        if contact:
            options.setdefault("contact_address", contact)
        port = site_setting(kind, "scheduler-port", scheduler_port, None)
        if port:
            options.setdefault("port", int(port))
        kind_value = site_setting(kind, "image-kind", image_kind, "container")
        if kind_value not in ("container", "singularity"):
            raise ValueError(f"image-kind must be 'container' or 'singularity', not {kind_value!r}")
        try:
            super().__init__(
                storage_grant=grant, token_dir=str(self._casa_dir), token_source=token_source,
                token_margin=int(site_setting(kind, "token-margin", token_margin, DEFAULT_MARGIN)),
                token_renewal=bool(site_setting(kind, "token-renewal", token_renewal, False)),
                walltime=str(site_setting(kind, "walltime", walltime, "04:00:00")),
                image=site_setting(kind, "image", image, ""), image_kind=kind_value,
                requirements=site_setting(kind, "requirements", requirements, ""),
                accounting_group=site_setting(kind, "accounting-group", accounting_group, ""),
                username=os.environ.get("JUPYTERHUB_USER") or os.environ.get("USER", ""),
                compute_token_file=compute, transfer_files=transfer, scheduler_options=options, **kwargs,
            )
        except BaseException:
            self._casa_remove_files()
            raise

    def _get_worker_security(self, security: Any) -> Any:
        """Write the workers' TLS files into the cluster's private directory; jobs get them by
        file transfer and use them by name (relative to the sandbox)."""
        if security is None:
            return None
        worker = security.get_tls_config_for_role("worker")
        for key, name in TLS_FILES.items():
            value = worker.get(key)
            if not value:
                raise ValueError(f"the cluster's security has no worker {key}: workers could not use TLS")
            if "\n" in value:  # in-memory PEM (Security.temporary())
                write_private(self._casa_dir / name, value)
            else:
                write_private(self._casa_dir / name, Path(value).read_text())
        return Security(tls_ca_file=TLS_FILES["ca_file"], tls_worker_cert=TLS_FILES["cert"],
                        tls_worker_key=TLS_FILES["key"], require_encryption=True)
