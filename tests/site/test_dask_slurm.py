"""Dask on a real Slurm, with workers reading through the real XCache with the user's storage token.

Everything runs in one loopback-only network namespace (tests/slurm_fixture.py joins the one of
tests/xrootd_fixture.py): munged, slurmctld, slurmd, the XRootD origin and cache, and, for the
gateway test, dask-gateway-server. The "notebook" is tests/support/dask_slurm_driver.py, run in that
namespace with alice's own JupyterHub API token (as a notebook has it); the hub and its token broker
are reached through the XRootD site's TLS forwarder (https://localhost/hub/...).

- ``FacilitySLURMCluster`` (scheduler in the "notebook", workers are Slurm jobs running as root);
- Dask Gateway with ``FacilitySlurmBackend`` (scheduler and workers are Slurm jobs submitted with
  sudo as the Unix user ``alice``, created for this module and removed afterwards), authenticated
  by the real hub (``JupyterHubAuthenticator``), worker tokens minted by the gateway with the hub's
  issuer keys and verified by the XCache against the hub's published JWKS.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dask_gateways import HUB_API_IN_NETNS, JOB_USER, gateway_config, running_gateway
from helpers import admin_api, http_login
from slurm_fixture import PARTITION
from xrootd_fixture import CACHE_AUDIENCE, ISSUER_URL

from casa_hub.dask.jobqueue import BrokerTokenSource, FacilitySLURMJob
from casa_hub.dask.worker_tokens import TokenLifetimeError

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
DRIVER = HERE.parent / "support" / "dask_slurm_driver.py"
VENV = Path(sys.prefix)
ALICE_FILE = "/store/user/alice/events.txt"


def alice_token(facility, admin_token: str, scopes: list[str]) -> str:
    """Alice signs in (so the hub holds her auth_state), then the admin makes her an API token."""
    session, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200, "alice could not sign in"
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": scopes, "note": "dask slurm test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def notebook_token(xrootd_facility, admin_token) -> str:
    """Like a notebook's JUPYTERHUB_API_TOKEN: it may renew alice's own facility tokens (the gateway
    learns her name and groups from the hub's /user for any of her tokens)."""
    return alice_token(xrootd_facility, admin_token, ["custom:casa-tokens:renew!user=alice"])


def run_driver(slurm_site, xrootd_site, mode: str, args: dict, api_token: str, tmp_path: Path) -> dict:
    args = {"slurm_conf": str(slurm_site.conf), "partition": PARTITION, "xrdcp": shutil.which("xrdcp"),
            "url": f"root://localhost:1095/{ALICE_FILE}", "ca_dir": str(xrootd_site.ca_dir),
            "ca_pem": str(xrootd_site.ca_pem), "slurm_log_dir": str(slurm_site.log_dir), **args}
    args_file = tmp_path / f"{mode}-args.json"
    args_file.write_text(json.dumps(args))
    env = {"PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(tmp_path),
           "SLURM_CONF": str(slurm_site.conf), "JUPYTERHUB_API_URL": HUB_API_IN_NETNS,
           "JUPYTERHUB_API_TOKEN": api_token, "JUPYTERHUB_USER": "alice", "LANG": "C.UTF-8"}
    r = subprocess.run(["ip", "netns", "exec", slurm_site.netns, sys.executable, str(DRIVER), mode, str(args_file)],
                       env=env, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    lines = [line for line in r.stdout.splitlines() if line.startswith("REPORT ")]
    assert r.returncode == 0 and lines, f"driver failed ({r.returncode}):\n{r.stderr[-4000:]}"
    assert api_token not in r.stdout + r.stderr, "the hub token appeared in the driver's output"
    return json.loads(lines[-1][len("REPORT "):])


def assert_workers_read_through_cache(report: dict, xrootd_site, expected_uid: int) -> None:
    workers = report["workers"]
    assert len(workers) == 2, f"expected 2 workers, got {sorted(workers)}"
    assert report["sum_of_squares"] == sum(x * x for x in range(10))
    expected = hashlib.sha256(xrootd_site.files[ALICE_FILE]).hexdigest()
    jtis, files, job_ids = set(), set(), set()
    for address, w in workers.items():
        # each worker is its own Slurm job and read alice's file through the cache with its own token
        assert w["slurm_job_id"], f"{address} is not a Slurm job"
        assert w["uid"] == expected_uid, (address, w["uid"])
        assert w["read_rc"] == 0, f"{address} could not read through the XCache: {w['read_stderr']}"
        assert w["read_sha256"] == expected, f"{address} read something else than alice's file"
        assert w["hub_credentials"] == [], f"{address} holds hub credentials: {w['hub_credentials']}"
        assert w["token_mode"] == "0o600" and w["token_owner_uid"] == expected_uid, (w["token_mode"], w["token_owner_uid"])
        claims = w["claims"]
        assert claims["sub"] == "alice" and claims["aud"] == CACHE_AUDIENCE and claims["iss"] == ISSUER_URL
        assert claims["scope"] == "storage.read:/user/alice"
        # Slurm ends the job at its walltime and would not have started it after its token's deadline
        assert w["time_limit"] == "00:10:00", w["time_limit"]
        deadline = time.mktime(time.strptime(w["deadline"], "%Y-%m-%dT%H:%M:%S"))
        assert claims["exp"] - 300 - 60 <= deadline <= claims["exp"] - 300, (w["deadline"], claims["exp"])
        jtis.add(claims["jti"])
        files.add(w["token_file"])
        job_ids.add(w["slurm_job_id"])
    assert len(jtis) == 2 and len(files) == 2 and len(job_ids) == 2, "workers must not share a job or a token"


# ---- dask-jobqueue: FacilitySLURMCluster -------------------------------------------------------------


def test_facility_slurm_cluster_scales_computes_and_reads_through_xcache(
        slurm_site, xrootd_site, notebook_token, tmp_path):
    token_dir = tmp_path / "tokens"
    t0 = time.monotonic()
    report = run_driver(slurm_site, xrootd_site, "jobqueue",
                        {"token_dir": str(token_dir), "log_dir": str(tmp_path / "job-logs")}, notebook_token, tmp_path)
    print(f"FacilitySLURMCluster: 2 workers after {report['seconds_to_two_workers']:.1f} s, "
          f"whole flow {time.monotonic() - t0:.1f} s")
    assert_workers_read_through_cache(report, xrootd_site, expected_uid=0)
    # what Slurm was given: walltime, only PATH and LANG from the notebook, a deadline, a token *path*
    script = report["job_script"]
    assert "#SBATCH -t 00:10:00" in script and "#SBATCH --export=PATH,LANG" in script
    assert f"#SBATCH -p {PARTITION}" in script and "export BEARER_TOKEN_FILE=" in script
    assert "--tls-cert" in script and "--tls-key" in script, "workers must use TLS"
    assert report["token_dir_mode"] == "0o700"
    assert not report["token_in_job_script_or_logs"] and not report["token_in_slurm_logs"]
    names = [row.split("|")[3] for row in report["jobs_while_running"]]
    assert names.count("dask-worker") == 2, report["jobs_while_running"]
    assert len(report["token_files_while_running"]) == 2
    # closing the cluster cancels the jobs and removes the token files
    assert not report["token_dir_exists_after_close"]
    assert slurm_site.wait_for_no_jobs(60) == [], "Slurm jobs left after cluster.close()"


async def test_worker_longer_than_its_token_is_not_submitted(slurm_site, xrootd_facility, notebook_token, tmp_path):
    # the demo's xcache grant lives 20 minutes: a 1-hour worker could not keep a valid token
    source = BrokerTokenSource(api_url=f"{xrootd_facility.hub_url}/hub/api", api_token=notebook_token, ssl={})
    job = FacilitySLURMJob("tls://127.0.0.1:8786", "too-long", cores=1, memory="1GB", storage_grant="xcache",
                           token_dir=str(tmp_path), token_source=source, walltime="01:00:00")
    before = slurm_site.jobs()
    with pytest.raises(TokenLifetimeError, match=r"'xcache' token lives .* walltime of 01:00:00"):
        await job.start()
    assert job.job_id is None and slurm_site.jobs() == before, "a job was submitted"
    assert list(tmp_path.iterdir()) == [], "a token file was written for a job that was not submitted"


# ---- Dask Gateway: FacilitySlurmBackend -------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_gateway(slurm_site, xrootd_site, xrootd_facility, job_user, tmp_path_factory):
    """dask-gateway-server with FacilitySlurmBackend (grant xcache, 20 min; walltime 10 min), in the
    namespace; yields (url, log path)."""
    d = tmp_path_factory.mktemp("slurm-gateway")
    ports = {"api_port": 18000, "proxy_port": 18001}  # inside the namespace; the proxy serves HTTP and TLS
    cfg = gateway_config(d, ports, backend="slurm", slurm_site=slurm_site, facility=xrootd_facility)
    with running_gateway(slurm_site, xrootd_site, cfg, ports["proxy_port"]) as gateway:
        yield gateway


def test_gateway_slurm_backend_scales_computes_and_reads_through_xcache(
        slurm_site, xrootd_site, slurm_gateway, job_user, notebook_token, tmp_path):
    url, log = slurm_gateway
    t0 = time.monotonic()
    report = run_driver(slurm_site, xrootd_site, "gateway", {"gateway_url": url, "gateway_log": str(log)},
                        notebook_token, tmp_path)
    print(f"Gateway/Slurm: 2 workers after {report['seconds_to_two_workers']:.1f} s, "
          f"whole flow {time.monotonic() - t0:.1f} s")
    assert_workers_read_through_cache(report, xrootd_site, expected_uid=job_user.pw_uid)
    name = report["cluster_name"]
    jobs = [row.split("|") for row in report["jobs_while_running"]]
    assert sorted(j[3] for j in jobs) == sorted([f"dask-scheduler-{name}"] + [f"dask-worker-{name}"] * 2), jobs
    assert {j[1] for j in jobs} == {JOB_USER}, "the gateway's jobs must run as the user"
    for token_file in report["token_files_while_running"]:
        # each worker's token lived in its own staging directory in alice's home, beside the cluster's
        assert token_file.startswith(f"{job_user.pw_dir}/.dask-gateway/{name}."), token_file
    assert not report["token_in_slurm_logs"] and not report["token_in_gateway_log"]
    # the gateway minted each worker token and audited it, without the value
    gateway_log = log.read_text(errors="replace")
    assert gateway_log.count("mint user=alice grant=xcache") >= 2
    # shutdown: no cluster, no job, no staging directory left
    assert report["clusters_after_shutdown"] == []
    assert slurm_site.wait_for_no_jobs(60) == [], "Slurm jobs left after the cluster's shutdown"
    staging = Path(job_user.pw_dir) / ".dask-gateway"
    deadline = time.monotonic() + 30  # the gateway removes them as it stops each job
    while (leftovers := sorted(p.name for p in staging.glob("*"))) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert leftovers == [], f"staging directories left: {leftovers}"
