"""Dask Gateways for the site tests, inside the XRootD/Slurm network namespace: the facility's Slurm backend
(jobs submitted with sudo as the Unix user ``alice``) or its local backend, authenticated by the real hub
through the XRootD site's TLS forwarder (``https://localhost/hub/api``).

``gateway_config(...)`` writes the configuration, ``running_gateway(...)`` starts dask-gateway-server and
stops it by PID; ``job_user`` is the session's Unix account for the Slurm backend's jobs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_fixture import PARTITION
from xrootd_fixture import CACHE_AUDIENCE, ISSUER_URL

VENV = Path(sys.prefix)
# the jobs of the gateway run as alice: a Python every user can read (scripts/install.sh test makes it)
JOBS_VENV = Path(__file__).resolve().parents[2] / ".venv-jobs"
HUB_API_IN_NETNS = "https://localhost/hub/api"  # the XRootD site's TLS forwarder to the hub
JOB_USER = "alice"

COMMON = """\
c = get_config()  # noqa: F821
c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = "{hub_api}"
"""
SLURM = """\
c.DaskGateway.backend_class = "casa_hub.dask.slurm.FacilitySlurmBackend"
c.FacilitySlurmBackend.slurm_conf = "{slurm_conf}"
c.FacilitySlurmBackend.dask_gateway_jobqueue_launcher = "{jobs_venv}/bin/dask-gateway-jobqueue-launcher"
c.FacilitySlurmClusterConfig.job_venv = "{jobs_venv}"
c.FacilitySlurmClusterConfig.partition = "{partition}"
c.FacilitySlurmClusterConfig.worker_walltime = "00:10:00"
c.FacilitySlurmClusterConfig.scheduler_memory = "1 G"
c.FacilitySlurmClusterConfig.worker_memory = "1 G"
c.FacilitySlurmClusterConfig.storage_grant = "{grant}"
c.FacilitySlurmClusterConfig.token_renewal = {token_renewal}
c.CasaTokenIssuer.issuer_url = "{issuer_url}"
c.CasaTokenIssuer.key_dir = "{key_dir}"
c.CasaTokenIssuer.grants = {{"{grant}": {{"audience": "{audience}", "scopes": ["storage.read:/user/{{username}}"],
                                        "lifetime": {lifetime}, "groups": ["physicists"]}}}}
"""
LOCAL = """\
c.DaskGateway.backend_class = "casa_hub.dask.local.FacilityLocalBackend"
c.FacilityLocalBackend.clusters_directory = "{clusters_dir}"
c.FacilityLocalBackend.niceness = 0
c.ClusterConfig.worker_memory = "1 G"
"""


def gateway_config(directory: Path, ports: dict[str, int], *, backend: str, slurm_site=None, facility=None,
                   grant: str = "xcache", lifetime: int = 1200, token_renewal: bool = False) -> Path:
    """The gateway's configuration file for ``backend`` ("slurm" or "local")."""
    text = COMMON.format(**ports, hub_api=HUB_API_IN_NETNS)
    if backend == "slurm":
        text += SLURM.format(slurm_conf=slurm_site.conf, jobs_venv=JOBS_VENV, partition=PARTITION, grant=grant,
                             token_renewal=token_renewal, issuer_url=ISSUER_URL, audience=CACHE_AUDIENCE,
                             key_dir=facility.state_dir / "issuer-keys", lifetime=lifetime)
    else:
        (directory / "clusters").mkdir(exist_ok=True)
        text += LOCAL.format(clusters_dir=directory / "clusters")
    cfg = directory / "dask_gateway_config.py"
    cfg.write_text(text)
    return cfg


@contextlib.contextmanager
def running_gateway(slurm_site, xrootd_site, cfg: Path, proxy_port: int) -> Iterator[tuple[str, Path]]:
    """dask-gateway-server with ``cfg`` in the namespace until the block ends: (url, log path)."""
    d = cfg.parent
    log = d / "gateway.log"
    env = {"PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(d),
           "SSL_CERT_FILE": str(xrootd_site.ca_pem)}  # the forwarder's test CA (hub API over https)
    with open(log, "wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", slurm_site.netns, str(VENV / "bin" / "dask-gateway-server"),
                                 "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=d,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{proxy_port}"
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run(["ip", "netns", "exec", slurm_site.netns, "curl", "-s", "-o", "/dev/null", "-w",
                                "%{http_code}", f"{url}/api/health"], capture_output=True, text=True)
            if r.stdout == "200":
                break
            assert proc.poll() is None, f"dask-gateway-server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dask-gateway-server not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def venv_problem(user: pwd.struct_passwd) -> str | None:
    """Why ``user`` could not run the jobs' Python, or None."""
    python = JOBS_VENV / "bin" / "python"
    if not python.exists():
        return f"{python} is missing (scripts/install.sh test creates it)"
    r = subprocess.run(["runuser", "-u", user.pw_name, "--", str(python), "-c", "import dask_gateway_server, jwt"],
                       capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else f"{user.pw_name} cannot use {JOBS_VENV}: {r.stderr.strip()[-300:]}"


def remove_user(slurm_site, user: pwd.struct_passwd) -> None:
    """Cancel the user's jobs, wait until none of its processes is left, delete the account."""
    slurm_site.run(["scancel", "-u", user.pw_name])
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-u", str(user.pw_uid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"processes of {user.pw_name} are still running"
        time.sleep(0.2)
    r = subprocess.run(["userdel", user.pw_name], capture_output=True, text=True)
    assert r.returncode == 0, f"userdel {user.pw_name} failed: {r.stderr}"
    shutil.rmtree(Path(user.pw_dir).parent, ignore_errors=True)


@pytest.fixture(scope="session")
def job_user(slurm_site) -> pwd.struct_passwd:
    """The Unix account ``alice`` (SlurmBackend submits as the user): created here if missing, removed at
    the end of the session if it was created here."""
    created = False
    try:
        user = pwd.getpwnam(JOB_USER)
    except KeyError:
        homes = Path(tempfile.mkdtemp(prefix="casa-homes-"))
        os.chmod(homes, 0o755)
        subprocess.run(["useradd", "--create-home", "--home-dir", str(homes / JOB_USER), "--shell", "/bin/sh",
                        JOB_USER], check=True, capture_output=True)
        user, created = pwd.getpwnam(JOB_USER), True
    try:
        problem = venv_problem(user)
        if problem:
            pytest.fail(f"the gateway's Slurm jobs cannot run: {problem} (it must be readable by every user)")
        yield user
    finally:
        if created:
            remove_user(slurm_site, user)
