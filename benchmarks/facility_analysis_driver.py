"""The measuring side of benchmarks/bench_facility_analysis.py, run with alice's notebook environment.

``python benchmarks/facility_analysis_driver.py ARGS.json``: attaches to the cluster the hub created for her
server (``casa_hub.dask.get_client``), runs the example analysis on the copy ``first`` through the cache (the
time from this process's start to that first histogram is reported), scales the cluster to ``workers``, starts
a ``LocalCluster`` of as many processes, warms the cache's copy ``warm``, then in each round alternates: the
facility's cluster on a copy the cache never saw (``cold<k>``), on ``warm``, and the LocalCluster on the local
files. Prints one ``REPORT`` line: the first-histogram time and the events per second of each run, per case.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402 - the clock starts before the imports, as a notebook's first cell would
import sys  # noqa: E402

from casa_hub.analysis import run  # noqa: E402
from casa_hub.dask import get_client, get_cluster  # noqa: E402


def fileset(paths: list[str]) -> dict:
    return {"bench": {"files": {p: "Events" for p in paths}}}


def main() -> None:
    from distributed import Client, LocalCluster

    args = json.load(open(sys.argv[1]))
    client = get_client()
    first = run(fileset(args["first"]), client=client)
    first_seconds = time.perf_counter() - STARTED
    assert first["events"] == args["events"], first["events"]
    get_cluster().scale(args["workers"])
    client.wait_for_workers(args["workers"], timeout=300)
    rates: dict[str, list[float]] = {"cold": [], "warm": [], "local": []}
    with LocalCluster(n_workers=args["workers"], threads_per_worker=1, processes=True,
                      dashboard_address=None) as local_cluster, Client(local_cluster, set_as_default=False) as local:
        run(fileset(args["warm"]), client=client)  # the cache now holds this copy
        run(fileset(args["local"]), client=local)  # the local workers' imports and the page cache
        for k in range(args["rounds"]):
            for case, paths, c in (("cold", args[f"cold{k}"], client), ("warm", args["warm"], client),
                                   ("local", args["local"], local)):
                t0 = time.perf_counter()
                result = run(fileset(paths), client=c)
                seconds = time.perf_counter() - t0
                assert result["events"] == args["events"], (case, result["events"])
                rates[case].append(result["events"] / seconds)
    print("REPORT " + json.dumps({"first_histogram_seconds": first_seconds, "rates": rates}), flush=True)


if __name__ == "__main__":
    main()
