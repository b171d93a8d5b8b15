"""The physicist's analysis on the facility against the same analysis on a plain Dask ``LocalCluster``.

The demo facility with its data cache (``casa_hub.demo.data_cache``: a real XRootD origin and XCache verifying
alice's storage token) and Dask Gateway (local backend). A generated data set (``FILES`` files of ``EVENTS``
events resampled from the CMS Open Data sample) is placed in the facility's namespace under
``/store/data/bench/<copy>/`` several times over. In alice's real notebook environment (her running server's
environment), benchmarks/facility_analysis_driver.py runs ``casa_hub.analysis.run`` in rounds:

- **facility, cold / warm cache**: on the cluster the hub created for her server (``get_client()``, scaled to
  ``WORKERS`` workers; the workers read with her own storage token, pushed by ``get_client``) reading through
  the cache a copy it never saw (one per round) / a copy it holds;
- **baseline**: a ``distributed.LocalCluster`` of ``WORKERS`` processes (one thread each) in the same process,
  reading the same files from the local disk.

And **time to first histogram**: from sign-in (the server starts, with its cluster) until the first histogram
of the data set read through the cache (a copy the cache never saw) in a fresh Python process with her notebook
environment, against a fresh Python process that starts a ``LocalCluster`` and runs the same analysis on the
local files. Medians of the rounds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, BenchmarkFailed, Context, Row

TITLE = "facility-analysis"
ORDER = 61
NEEDS_FACILITY = False  # its own: with the data cache and Dask Gateway
FILES, EVENTS, WORKERS, ROUNDS = 4, 25_000, 2, 3
QUICK = {"files": 2, "events": 10_000, "rounds": 2}
DRIVER = ROOT / "benchmarks" / "facility_analysis_driver.py"
BASELINE_FIRST = """
import json, sys, time
from distributed import Client, LocalCluster
from casa_hub.analysis import run
args = json.load(open(sys.argv[1]))
with LocalCluster(n_workers=args["workers"], threads_per_worker=1, processes=True, dashboard_address=None) as c, \\
        Client(c) as client:
    result = run({"bench": {"files": {p: "Events" for p in args["local"]}}}, client=client)
assert result["events"] == args["events"], result["events"]
print("DONE")
"""


def _support():
    support = str(ROOT / "tests" / "support")
    if support not in sys.path:
        sys.path.insert(0, support)
    import facilities
    import helpers

    return facilities, helpers


def _report(proc: subprocess.CompletedProcess, what: str) -> dict:
    line = next((x for x in proc.stdout.splitlines() if x.startswith("REPORT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchmarkFailed(f"{what} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line[len("REPORT "):])


def run(ctx: Context) -> list[Row]:
    from casa_hub.analysis.generate import generate
    from casa_hub.demo.data_cache import data_cache_missing

    reason = data_cache_missing()
    if reason:
        raise BenchmarkFailed(f"the facility analysis benchmark needs the data cache: {reason}")
    facilities, helpers = _support()
    files, events, rounds = (QUICK["files"], QUICK["events"], QUICK["rounds"]) if ctx.options.quick else \
        (FILES, EVENTS, ROUNDS)
    tmp = Path(tempfile.mkdtemp(prefix="casa-bench-facility-analysis-"))
    try:
        fac = facilities.make_facility(tmp / "facility", ctx.admin_token, name="bench-analysis", dask=True,
                                       xcache=True, data_events=0)
        fac.prepare()
        ctx.log(f"  generating {files} files x {events} events")
        local = generate(tmp / "data", files, events, progress=None)
        namespace = fac.state_dir / "data" / "store" / "data" / "bench"
        copies = ["first", "warm", *(f"cold{k}" for k in range(rounds))]
        for copy in copies:
            (namespace / copy).mkdir(parents=True)
            for p in local:
                shutil.copyfile(p, namespace / copy / p.name)
        with fac:
            cache = fac.data_cache.url
            args = {"local": [str(p) for p in local], "workers": WORKERS, "rounds": rounds, "events": files * events,
                    **{copy: [f"{cache}//store/data/bench/{copy}/{p.name}" for p in local] for copy in copies}}
            args_file = tmp / "args.json"
            args_file.write_text(json.dumps(args))
            ctx.log("  time to first histogram: sign-in, server and cluster start, first analysis through the cache")
            t0 = time.perf_counter()
            user = helpers.login_and_start_server(fac.hub_url, ctx.admin_token, "alice", fac.password("alice"))
            env = helpers.read_server_environ(user["servers"][""]["state"]["pid"])
            started = time.perf_counter() - t0
            ctx.log(f"  server with its cluster ready in {started:.1f} s; running {rounds} rounds of "
                    "facility cold / warm and LocalCluster")
            proc = subprocess.run([sys.executable, str(DRIVER), str(args_file)], env=env, cwd=tmp,
                                  capture_output=True, text=True, timeout=3600)
            report = _report(proc, "the facility analysis driver")
            first_facility = started + report["first_histogram_seconds"]
        t0 = time.perf_counter()
        base = subprocess.run([sys.executable, "-c", BASELINE_FIRST, str(args_file)], capture_output=True,
                              text=True, timeout=1800, cwd=tmp)
        first_local = time.perf_counter() - t0
        if base.returncode != 0 or "DONE" not in base.stdout:
            raise BenchmarkFailed(f"the LocalCluster first-histogram run failed: {base.stderr[-2000:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in report["rates"].items()}
    case = f"ttbar selection, {files} files x {events} events, {WORKERS} Dask workers"
    baseline = f"LocalCluster, {WORKERS} workers, local files: {med['local']:,.0f} events/s"
    return [
        Row(TITLE, f"{case}: the facility's cluster through the XCache with alice's token, cold cache", "events/s",
            med["cold"], baseline, med["local"]),
        Row(TITLE, f"{case}: the facility's cluster through the XCache with alice's token, warm cache", "events/s",
            med["warm"], baseline, med["local"]),
        Row(TITLE, f"{case}: sign-in to first histogram (server + cluster start, cold cache)", "s", first_facility,
            f"fresh Python, LocalCluster start + analysis on local files: {first_local:.1f} s", first_local),
    ]
