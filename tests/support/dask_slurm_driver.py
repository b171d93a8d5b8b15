"""The "notebook" side of tests/site/test_dask_slurm.py, run as a process inside the Slurm/XRootD network
namespace (the scheduler, the gateway and the batch jobs are only reachable there).

``python tests/support/dask_slurm_driver.py jobqueue|gateway ARGS.json`` creates a cluster
(``FacilitySLURMCluster``, or through Dask Gateway's ``FacilitySlurmBackend``), scales it to 2
workers, computes, makes every worker read a file through the real XCache with the storage token it
was given, looks at the workers' environments and token files, shuts the cluster down and prints
one JSON report. The report holds facts about tokens (claims, file modes, whether a value appears
somewhere), never a token value.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt

HUB_CREDENTIALS = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_URL")


def worker_facts(xrdcp: str, url: str, ca_dir: str) -> dict[str, Any]:
    """Runs ON a worker: read ``url`` through the cache with BEARER_TOKEN_FILE; describe the token."""
    token_file = os.environ.get("BEARER_TOKEN_FILE", "")
    facts: dict[str, Any] = {
        "host": socket.gethostname(), "pid": os.getpid(), "uid": os.getuid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "token_file": token_file,
        "hub_credentials": sorted(k for k in HUB_CREDENTIALS if k in os.environ),
    }
    if token_file and os.path.exists(token_file):
        st = os.stat(token_file)
        token = Path(token_file).read_text().strip()
        facts["token_mode"] = oct(stat.S_IMODE(st.st_mode))
        facts["token_owner_uid"] = st.st_uid
        claims = jwt.decode(token, options={"verify_signature": False})
        facts["claims"] = {k: claims.get(k) for k in ("sub", "aud", "scope", "jti", "exp", "iss")}
        facts["token_sha256"] = hashlib.sha256(token.encode()).hexdigest()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env["X509_CERT_DIR"] = ca_dir
    env["XRD_CONNECTIONRETRY"] = "1"
    if token_file:
        env["BEARER_TOKEN_FILE"] = token_file
    r = subprocess.run([xrdcp, "--nopbar", "-f", url, "-"], env=env, capture_output=True, timeout=60)
    facts["read_rc"] = r.returncode
    facts["read_sha256"] = hashlib.sha256(r.stdout).hexdigest()
    facts["read_stderr"] = r.stderr.decode(errors="replace")[-300:]
    return facts


def squeue(args: dict[str, Any]) -> list[str]:
    r = subprocess.run(["timeout", "10", "squeue", "-h", "-o", "%i|%u|%T|%j"], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "SLURM_CONF": args["slurm_conf"]})
    return [line for line in r.stdout.splitlines() if line.strip()]


def slurm_limits(job_id: str, args: dict[str, Any]) -> dict[str, str]:
    """TimeLimit and Deadline that slurmctld holds for a job (``scontrol show job``)."""
    r = subprocess.run(["timeout", "10", "scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "SLURM_CONF": args["slurm_conf"]})
    fields = dict(item.split("=", 1) for item in r.stdout.split() if "=" in item)
    return {"time_limit": fields.get("TimeLimit", ""), "deadline": fields.get("Deadline", "")}


def collect(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Compute, then let each worker read the file and describe itself."""
    futures = client.map(lambda x: x * x, range(10))
    total = client.submit(sum, futures).result(timeout=120)
    facts = client.run(worker_facts, args["xrdcp"], args["url"], args["ca_dir"])
    for w in facts.values():
        if w.get("slurm_job_id"):
            w.update(slurm_limits(w["slurm_job_id"], args))
    return {"sum_of_squares": total, "workers": facts, "jobs_while_running": squeue(args)}


def token_values(workers: dict[str, Any]) -> list[str]:
    """The token values the workers used (read here only to check they appear nowhere else)."""
    out = []
    for w in workers.values():
        path = w.get("token_file")
        if path and os.path.exists(path):
            out.append(Path(path).read_text().strip())
    return out


def seen_in(values: list[str], texts: list[str]) -> bool:
    return any(v and v in t for v in values for t in texts)


def run_jobqueue(args: dict[str, Any]) -> dict[str, Any]:
    from distributed import Client

    from casa_hub.dask.jobqueue import BrokerTokenSource, FacilitySLURMCluster

    source = BrokerTokenSource(ssl={"ca_certs": args["ca_pem"]})
    report: dict[str, Any] = {}
    t0 = time.monotonic()
    cluster = FacilitySLURMCluster(
        cores=1, memory="1GB", queue=args["partition"], python=sys.executable, interface="lo",
        walltime=args.get("walltime", "00:10:00"), token_dir=args["token_dir"], token_source=source,
        log_directory=args["log_dir"], death_timeout=60,
    )
    report["job_script"] = cluster.job_script()
    token_dir = Path(cluster._casa_dir)
    report["token_dir"] = str(token_dir)
    report["token_dir_mode"] = oct(stat.S_IMODE(token_dir.stat().st_mode))
    try:
        with Client(cluster) as client:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=180)
            report["seconds_to_two_workers"] = time.monotonic() - t0
            report.update(collect(client, args))
            values = token_values(report["workers"])
            scripts = [p.read_text() for p in Path(args["log_dir"]).glob("*")]
            report["token_in_job_script_or_logs"] = seen_in(values, [report["job_script"], *scripts])
            report["token_in_slurm_logs"] = seen_in(values, [p.read_text(errors="replace")
                                                             for p in Path(args["slurm_log_dir"]).glob("*")])
            report["token_files_while_running"] = sorted(p.name for p in token_dir.glob("*.token"))
    finally:
        cluster.close()
    report["token_dir_exists_after_close"] = token_dir.exists()
    return report


def run_gateway(args: dict[str, Any]) -> dict[str, Any]:
    from dask_gateway import Gateway
    from dask_gateway.auth import JupyterHubAuth

    gateway = Gateway(args["gateway_url"], auth=JupyterHubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"]))
    report: dict[str, Any] = {}
    t0 = time.monotonic()
    cluster = gateway.new_cluster()
    report["cluster_name"] = cluster.name
    try:
        cluster.scale(2)
        with cluster.get_client() as client:
            client.wait_for_workers(2, timeout=180)
            report["seconds_to_two_workers"] = time.monotonic() - t0
            report.update(collect(client, args))
            values = token_values(report["workers"])
            report["token_in_slurm_logs"] = seen_in(values, [p.read_text(errors="replace")
                                                             for p in Path(args["slurm_log_dir"]).glob("*")])
            report["token_in_gateway_log"] = seen_in(values, [Path(args["gateway_log"]).read_text(errors="replace")])
            report["token_files_while_running"] = sorted(w["token_file"] for w in report["workers"].values())
    finally:
        cluster.shutdown()
    report["clusters_after_shutdown"] = [c.name for c in gateway.list_clusters()]
    return report


def main() -> None:
    mode, args_file = sys.argv[1], sys.argv[2]
    args = json.loads(Path(args_file).read_text())
    asyncio.set_event_loop(asyncio.new_event_loop())
    report = run_jobqueue(args) if mode == "jobqueue" else run_gateway(args)
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
