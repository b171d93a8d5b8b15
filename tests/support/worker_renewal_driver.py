"""The "notebook" of tests/site/test_worker_renewal_site.py, run inside the Slurm/XRootD network namespace.

``python tests/support/worker_renewal_driver.py ARGS.json``: creates a cluster through the Dask Gateway at
``gateway_url`` with the notebook's own credential (``$JUPYTERHUB_API_TOKEN``), attaches to it with
``casa_hub.dask.get_client`` (which pushes each renewal of ``$CASA_TOKEN_DIR/$CASA_WORKER_STORAGE_GRANT.token``
to the workers), scales it to 2 workers and then, every ``period`` seconds until the file ``stop_file``
appears, makes each worker read ``url`` through the real XCache with the token in its ``BEARER_TOKEN_FILE``.
Each read is appended to ``progress`` as one JSON line (time, exit code, the worker token's jti and exp;
never a token value). At the end it prints one ``REPORT`` line with what each worker holds (environment,
files) and shuts the cluster down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt


def read_through_cache(xrdcp: str, url: str, ca_dir: str) -> dict[str, Any]:
    """Runs ON a worker: one read of ``url`` with the worker's current storage token."""
    token_file = os.environ.get("BEARER_TOKEN_FILE", "")
    fact: dict[str, Any] = {"t": time.time(), "token_file": token_file, "jti": None, "exp": None}
    if token_file and os.path.exists(token_file):
        claims = jwt.decode(Path(token_file).read_text().strip(), options={"verify_signature": False})
        fact.update(jti=claims.get("jti"), exp=claims.get("exp"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "X509_CERT_DIR": ca_dir, "XRD_CONNECTIONRETRY": "1",
           "XRD_REQUESTTIMEOUT": "20"}
    if token_file:
        env["BEARER_TOKEN_FILE"] = token_file
    r = subprocess.run([xrdcp, "--nopbar", "-f", url, "-"], env=env, capture_output=True, timeout=60)
    fact.update(rc=r.returncode, sha256=hashlib.sha256(r.stdout).hexdigest(),
                stderr=r.stderr.decode(errors="replace")[-200:])
    return fact


def worker_holdings(dask_worker) -> dict[str, Any]:  # noqa: ANN001 - runs ON a worker
    """The worker's environment, the files in its directories, its token file and the claims there."""
    token_file = os.environ.get("BEARER_TOKEN_FILE", "")
    tops = {dask_worker.local_directory, os.getcwd()} | ({os.path.dirname(token_file)} if token_file else set())
    files = sorted({os.path.join(d, f) for top in tops for d, _, names in os.walk(top) for f in names})
    claims = {}
    if token_file and os.path.exists(token_file):
        c = jwt.decode(Path(token_file).read_text().strip(), options={"verify_signature": False})
        claims = {k: c.get(k) for k in ("sub", "aud", "scope", "iss", "jti", "exp")}
    return {"environ": dict(os.environ), "files": files, "token_file": token_file, "claims": claims,
            "uid": os.getuid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "record": getattr(dask_worker, "casa_storage_token", None)}


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    asyncio.set_event_loop(asyncio.new_event_loop())
    from dask_gateway import Gateway
    from dask_gateway.auth import JupyterHubAuth

    from casa_hub.dask import get_client

    auth = JupyterHubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"])
    gateway = Gateway(args["gateway_url"], auth=auth)
    progress = open(args["progress"], "a", buffering=1)  # noqa: SIM115 - one line per read, until the end
    cluster = gateway.new_cluster()
    report: dict[str, Any] = {"cluster_name": cluster.name}
    try:
        cluster.scale(2)
        client = get_client(cluster.name, address=args["gateway_url"], auth=auth)  # the notebook's path
        client.wait_for_workers(2, timeout=240)
        progress.write(json.dumps({"event": "ready", "t": time.time()}) + "\n")
        stop = Path(args["stop_file"])
        while not stop.exists():
            started = time.monotonic()
            for address, fact in client.run(read_through_cache, args["xrdcp"], args["url"], args["ca_dir"]).items():
                progress.write(json.dumps({"event": "read", "worker": address, **fact}) + "\n")
            time.sleep(max(0.0, args["period"] - (time.monotonic() - started)))
        report["workers"] = client.run(worker_holdings)
        client.close()
    finally:
        cluster.shutdown()
        progress.close()
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
