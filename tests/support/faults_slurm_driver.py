"""The "notebook" side of tests/site/test_faults_slurm.py, run as a process inside the Slurm network namespace.

``python tests/support/faults_slurm_driver.py ARGS.json`` creates a ``FacilitySLURMCluster``, scales it
to 2 workers and computes, then at each step writes ``ready-<n>`` into ``step_dir`` and waits for
the test to write ``go-<n>`` (the test stops slurmctld after step 1 and starts it again after step 2),
computes again, scales to 3 workers, computes, closes the cluster and prints one JSON report (no
token values).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STEP_TIMEOUT = 120


def square(x: int) -> int:
    return x * x


def job_id() -> str | None:
    """Runs on each worker: the Slurm job it belongs to."""
    return os.environ.get("SLURM_JOB_ID")


def compute(client: Any) -> dict[str, Any]:
    """Every worker computes; the sum and which Slurm job each worker runs in."""
    workers = client.run(job_id)
    total = client.submit(sum, client.map(square, range(40), pure=False)).result(timeout=120)
    per_worker = client.run(square, 3)  # a task on every worker, not only on some
    return {"sum": total, "workers": workers, "every_worker": sorted(set(per_worker.values()))}


def step(step_dir: Path, n: int) -> None:
    (step_dir / f"ready-{n}").touch()
    deadline = time.monotonic() + STEP_TIMEOUT
    while not (step_dir / f"go-{n}").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the test did not let step {n} go on within {STEP_TIMEOUT} s")
        time.sleep(0.1)


def run(args: dict[str, Any]) -> dict[str, Any]:
    from distributed import Client

    from casa_hub.dask.jobqueue import BrokerTokenSource, FacilitySLURMCluster

    step_dir = Path(args["step_dir"])
    cluster = FacilitySLURMCluster(
        cores=1, memory="1GB", queue=args["partition"], python=sys.executable, interface="lo",
        walltime="00:10:00", token_dir=args["token_dir"], token_source=BrokerTokenSource(ssl={"ca_certs": args["ca_pem"]}),
        log_directory=args["log_dir"], death_timeout=60,
    )
    report: dict[str, Any] = {}
    try:
        with Client(cluster) as client:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=180)
            report["before"] = compute(client)
            step(step_dir, 1)  # the test stops slurmctld
            report["controller_down"] = compute(client)
            step(step_dir, 2)  # the test starts slurmctld again
            report["after_restart"] = compute(client)
            cluster.scale(3)
            client.wait_for_workers(3, timeout=180)
            report["scaled"] = compute(client)
    finally:
        cluster.close()
    return report


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    asyncio.set_event_loop(asyncio.new_event_loop())
    print("REPORT " + json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
