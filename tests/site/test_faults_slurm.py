"""Fault: the Slurm controller restarts while a user's Dask cluster runs on the batch system.

A ``FacilitySLURMCluster`` (scheduler in the "notebook", tests/test_faults_slurm_driver.py run in the
Slurm namespace with alice's API token) has 2 workers as Slurm jobs. slurmctld is stopped (SIGTERM: it
saves its state in StateSaveLocation) and started again. What must hold: the workers keep computing
while the controller is down and after it is back; slurmctld recovers the same running jobs; the
cluster can still scale (a new worker job is submitted, gets its token from the broker and joins).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import admin_api, http_login
from slurm_fixture import PARTITION

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).parents[1] / "support" / "faults_slurm_driver.py"
HUB_API_IN_NETNS = "https://localhost/hub/api"  # the XRootD site's TLS forwarder to the hub
EXPECTED_SUM = sum(x * x for x in range(40))


def notebook_token(facility, admin_token: str) -> str:
    """alice signs in; the admin gives her a token like her notebook's (it may renew her tokens)."""
    _, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200, "alice could not sign in"
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user=alice"], "note": "slurm fault test",
                        "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def wait_for_step(proc: subprocess.Popen, step_dir: Path, n: int, out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (step_dir / f"ready-{n}").exists():
        assert proc.poll() is None, f"the driver exited ({proc.returncode}):\n{out.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"the driver did not reach step {n}:\n{out.read_text()[-4000:]}"
        time.sleep(0.2)


def worker_jobs(slurm_site) -> dict[str, str]:
    return {j["id"]: j["state"] for j in slurm_site.jobs() if j["name"] == "dask-worker"}


def test_slurm_controller_restart_keeps_the_cluster_computing_and_scaling(
        slurm_site, xrootd_site, xrootd_facility, admin_token, tmp_path):
    api_token = notebook_token(xrootd_facility, admin_token)
    step_dir = tmp_path / "steps"
    step_dir.mkdir()
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"partition": PARTITION, "token_dir": str(tmp_path / "tokens"),
                                "log_dir": str(tmp_path / "job-logs"), "ca_pem": str(xrootd_site.ca_pem),
                                "step_dir": str(step_dir)}))
    env = {"PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(tmp_path),
           "SLURM_CONF": str(slurm_site.conf), "JUPYTERHUB_API_URL": HUB_API_IN_NETNS,
           "JUPYTERHUB_API_TOKEN": api_token, "JUPYTERHUB_USER": "alice", "LANG": "C.UTF-8"}
    out = tmp_path / "driver.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(["ip", "netns", "exec", slurm_site.netns, sys.executable, str(DRIVER), str(args)],
                                env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        wait_for_step(proc, step_dir, 1, out)
        running = worker_jobs(slurm_site)
        assert len(running) == 2 and set(running.values()) == {"RUNNING"}, running
        ctld_log = slurm_site.log_dir / "slurmctld.log"
        since = ctld_log.stat().st_size

        slurm_site.stop_controller()
        down = slurm_site.run(["squeue", "-h"], timeout=5)
        assert down.returncode != 0, "squeue must fail while slurmctld is down"
        (step_dir / "go-1").touch()
        wait_for_step(proc, step_dir, 2, out)  # the driver computed with the controller down

        slurm_site.start_controller()
        assert worker_jobs(slurm_site) == running, "slurmctld recovered the same running worker jobs"
        assert "Recovered JobId=" in ctld_log.read_bytes()[since:].decode(errors="replace")
        (step_dir / "go-2").touch()
        proc.wait(240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{text[-4000:]}"
    assert api_token not in text
    report = json.loads(lines[-1][len("REPORT "):])

    before = report["before"]
    assert before["sum"] == EXPECTED_SUM and sorted(before["workers"].values()) == sorted(running)
    for phase in ("controller_down", "after_restart"):
        assert report[phase]["sum"] == EXPECTED_SUM, phase
        assert report[phase]["workers"] == before["workers"], f"{phase}: the same workers keep computing"
        assert report[phase]["every_worker"] == [9], phase
    scaled = report["scaled"]
    assert scaled["sum"] == EXPECTED_SUM and len(scaled["workers"]) == 3, scaled
    new_jobs = set(scaled["workers"].values()) - set(running)
    assert len(new_jobs) == 1 and set(running) <= set(scaled["workers"].values()), \
        "after the restart the cluster scaled up with one new Slurm job, keeping the old ones"
    assert slurm_site.wait_for_no_jobs(60) == [], "Slurm jobs left after cluster.close()"
