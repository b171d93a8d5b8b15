"""Submit descriptions of Dask jobs for HTCondor, built and checked with the ``htcondor2`` bindings.

Pure functions, used by ``casa_hub.dask.htcondor.HTCondorBackend``: no token value ever enters a
description (tokens travel as files in ``transfer_input_files``), and every value is checked before
it is placed, because a newline in a value would add submit commands of its own (``htcondor2``
keeps it verbatim) and a broken expression would only fail at the schedd.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

import classad2
import htcondor2

from casa_hub.common.classad import classad_string as quoted_classad_string

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBMIT_KEY = re.compile(r"(?:\+|MY\.)?[A-Za-z_][A-Za-z0-9_.]*")
_PATH = re.compile(r"/[A-Za-z0-9._/+@=-]*")
_IMAGE = re.compile(r"[A-Za-z0-9._/:@+=-]+")

#: JobStatus values of jobs that are, or will be, running
ALIVE_STATES = {1, 2, 6, 7}  # idle, running, transferring output, suspended


class SubmitDescriptionError(ValueError):
    """A value cannot be placed safely into a submit description; the message names it."""


def check_expression(expr: str, setting: str) -> str:
    """``expr`` if it is a single-line ClassAd expression (parsed by ``classad2``), else raise."""
    if not isinstance(expr, str) or "\n" in expr or "\r" in expr:
        raise SubmitDescriptionError(f"{setting} must be a single-line ClassAd expression")
    try:
        classad2.ExprTree(expr)
    except Exception:  # classad2 raises its own ClassAdException
        raise SubmitDescriptionError(f"{setting} is not a valid ClassAd expression: {expr!r}") from None
    return expr


def classad_string(value: str, setting: str) -> str:
    """``value`` as a quoted ClassAd string literal."""
    try:
        return quoted_classad_string(value, setting)
    except ValueError as e:
        raise SubmitDescriptionError(str(e)) from None


def check_path(path: str, setting: str) -> str:
    """An absolute path safe in ``executable`` and the comma-separated ``transfer_input_files``."""
    if not isinstance(path, str) or not _PATH.fullmatch(path) or ".." in path.split("/"):
        raise SubmitDescriptionError(f"{setting} {path!r} is not a plain absolute path (no spaces or commas)")
    return path


def check_image(image: str, setting: str = "image") -> str:
    if not _IMAGE.fullmatch(image or ""):
        raise SubmitDescriptionError(f"{setting} {image!r} is not an image reference or path")
    return image


@dataclass
class JobSpec:
    """What one Dask job (the scheduler or a worker) needs from HTCondor."""

    executable: str
    input_files: list[str]
    cpus: int
    memory_bytes: int
    disk_bytes: int
    walltime: int
    batch_name: str
    cluster_name: str
    role: str  # "scheduler" or "worker"
    username: str
    image: str = ""
    image_kind: str = "container"  # container | singularity | none
    requirements: str = ""
    accounting_group: str = ""
    not_after: int | None = None  # the job must not start later (its token would not cover it)
    extra: Mapping[str, str] = field(default_factory=dict)


def submit_description(job: JobSpec) -> htcondor2.Submit:
    """The job's submit description (one job, ``queue 1``)."""
    desc: dict[str, str] = {}
    if job.image_kind == "container":
        desc["universe"] = "container"
        desc["container_image"] = check_image(job.image, "image")
    else:
        desc["universe"] = "vanilla"
        if job.image_kind == "singularity":
            desc["MY.SingularityImage"] = classad_string(check_image(job.image, "image"), "image")
        elif job.image_kind != "none":
            raise SubmitDescriptionError(f"image_kind must be container, singularity or none, not {job.image_kind!r}")
    desc["executable"] = check_path(job.executable, "executable")
    desc["transfer_executable"] = "True"
    desc["getenv"] = "False"  # nothing of the gateway's environment reaches the job
    desc["should_transfer_files"] = "YES"
    desc["when_to_transfer_output"] = "ON_EXIT_OR_EVICT"
    desc["transfer_input_files"] = ", ".join(check_path(p, "input file") for p in job.input_files)
    desc["transfer_output_files"] = '""'
    desc["output"] = f"dask-{job.role}.out"
    desc["error"] = f"dask-{job.role}.err"
    desc["request_cpus"] = str(int(job.cpus))
    desc["request_memory"] = str(max(1, -(-int(job.memory_bytes) // 2**20)))  # MiB, rounded up
    desc["request_disk"] = str(max(1, -(-int(job.disk_bytes) // 2**10)))  # KiB
    requirements = [f"({check_expression(job.requirements, 'requirements')})"] if job.requirements else []
    if job.not_after is not None:
        requirements.append(f"(time() <= {int(job.not_after)})")
        desc["periodic_remove"] = f"(JobStatus == 1) && (time() > {int(job.not_after)})"
    if requirements:
        desc["requirements"] = check_expression(" && ".join(requirements), "requirements")
    desc["allowed_job_duration"] = str(int(job.walltime))
    if job.accounting_group:
        desc["accounting_group"] = check_single_word(job.accounting_group, "accounting_group")
    desc["accounting_group_user"] = check_single_word(job.username, "username")
    desc["batch_name"] = check_single_word(job.batch_name, "batch_name")
    desc["MY.DaskGatewayCluster"] = classad_string(job.cluster_name, "cluster name")
    desc["MY.DaskGatewayRole"] = classad_string(job.role, "role")
    desc["leave_in_queue"] = "False"
    for key, value in job.extra.items():
        if not _SUBMIT_KEY.fullmatch(key) or key.lower() in {k.lower() for k in desc}:
            raise SubmitDescriptionError(f"extra submit command {key!r} is not allowed (bad or managed name)")
        if "\n" in str(value) or "\r" in str(value):
            raise SubmitDescriptionError(f"extra submit command {key!r} must be one line")
        desc[key] = str(value)
    return htcondor2.Submit(desc)


def check_single_word(value: str, setting: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._@+-]*", value):
        raise SubmitDescriptionError(f"{setting} {value!r} must be one word of letters, digits and . _ @ + -")
    return value


def env_file(env: Mapping[str, str]) -> str:
    """Shell assignments for the job's environment (sourced by the job script, file mode 0600)."""
    lines = []
    for name, value in sorted(env.items()):
        if not _ENV_NAME.fullmatch(name):
            raise SubmitDescriptionError(f"environment variable name {name!r} is not allowed")
        lines.append(f"{name}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def job_script(role: str, name: str, cluster_name: str, setup: str, command: list[str],
               token_file: str | None) -> str:
    """The job's executable: load the environment file, point at the token, start dask."""
    lines = [
        "#!/bin/sh",
        f"# dask-gateway {role} {name} of cluster {cluster_name} (casa_hub HTCondorBackend)",
        "set -e",
        'cd "${_CONDOR_SCRATCH_DIR:-.}"',
        "chmod 600 dask-gateway.env dask.pem",
        "set -a; . ./dask-gateway.env; set +a",
    ]
    if token_file:
        lines += [f'chmod 600 "{token_file}"', f'export BEARER_TOKEN_FILE="$PWD/{token_file}"']
    if setup:
        lines.append(setup)
    lines.append("exec " + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines) + "\n"


def parse_terse(stdout: str) -> str:
    """The job id from ``condor_submit -terse`` (``123.0 - 123.0``)."""
    m = re.match(r"\s*(\d+\.\d+)\s*-\s*\d+\.\d+", stdout)
    if not m:
        raise ValueError(f"unexpected condor_submit output: {stdout.strip()[:200]!r}")
    return m.group(1)


def parse_states(stdout: str) -> dict[str, bool]:
    """``condor_q -af:j JobStatus`` lines (``123.0 2``) as job id -> alive."""
    states = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            states[parts[0]] = int(parts[1]) in ALIVE_STATES
    return states
