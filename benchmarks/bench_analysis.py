"""The example analysis through the facility's data path against the same analysis on local files, and the
data cache against a wide-area link.

A real XRootD origin and XCache (tests/support/xrootd_fixture.py: the SciTokens plugin verifying the hub's
tokens, in a loopback-only network namespace) serve a generated data set (``casa_hub.analysis.generate``:
``FILES`` files of ``EVENTS`` events resampled from the CMS Open Data sample). In the namespace,
benchmarks/analysis_driver.py runs ``casa_hub.analysis.run`` on a Dask ``LocalCluster`` of ``WORKERS``
processes whose XRootD clients use alice's broker tokens, in rounds:

- **cold / warm cache** vs **local files**: events per second reading through the XCache with alice's
  cache token (a copy the cache never saw / one it holds) against the same workers reading the files from
  the local disk (the baseline);
- **warm cache** vs **WAN**: reading the origin directly through a relay adding ``DELAY_MS`` per round trip
  (alice's origin-audience token).

Medians of the rounds. Not measured here: Dask Gateway's own workers (the workers are the same kind of
local processes its local backend starts), the time from opening a notebook to the first histogram.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from .common import ROOT, BenchmarkFailed, Context, Row

TITLE = "analysis"
ORDER = 60
NEEDS_FACILITY = False  # its own: a facility whose issuer XRootD trusts, and the XRootD site
FILES, EVENTS, WORKERS, ROUNDS, DELAY_MS = 4, 25_000, 2, 3, 20
QUICK = {"files": 2, "events": 10_000, "rounds": 2}
DRIVER = ROOT / "benchmarks" / "analysis_driver.py"


def _support():
    support = str(ROOT / "tests" / "support")
    if support not in sys.path:
        sys.path.insert(0, support)
    import xrootd_fixture

    return xrootd_fixture


def run(ctx: Context) -> list[Row]:
    from casa_hub.analysis.generate import generate
    from casa_hub.common.files import write_private

    x = _support()
    reason = x.xrootd_missing()
    if reason:
        raise BenchmarkFailed(f"the analysis benchmark needs XRootD: {reason} (scripts/install.sh test)")
    files, events, rounds = (QUICK["files"], QUICK["events"], QUICK["rounds"]) if ctx.options.quick else \
        (FILES, EVENTS, ROUNDS)
    tmp = Path(tempfile.mkdtemp(prefix="casa-bench-analysis-"))
    try:
        with x.running_xrootd_facility(tmp / "facility", ctx.admin_token, name="bench-xrootd") as fac:
            run_dir = Path(tempfile.mkdtemp(prefix="casa-bench-xrootd-"))  # the servers' user enters it
            run_dir.chmod(0o755)
            site = x.XRootDSite(fac, run_dir)
            site.start()
            try:
                ctx.log(f"  generating {files} files x {events} events")
                local = generate(tmp / "data", files, events, progress=None)
                base = "/store/user/alice/bench"
                copies = {"warm": [f"{base}/warm/{p.name}" for p in local]}
                for k in range(rounds):
                    copies[f"cold{k}"] = [f"{base}/cold{k}/{p.name}" for p in local]
                for paths in copies.values():
                    for p, path in zip(local, paths, strict=True):
                        site.add_file(path, p.read_bytes())
                scratch = run_dir / "bench-client"
                scratch.mkdir()
                cache_token = write_private(scratch / "cache.token", x.broker_token(fac, "alice", "xcache"))
                origin_token = write_private(scratch / "origin.token", x.broker_token(fac, "alice", "origin-user"))
                cache = f"root://localhost:{x.CACHE_PORT}/"
                args = {"local": [str(p) for p in local], "warm": [cache + p for p in copies["warm"]],
                        "cold": [[cache + p for p in copies[f"cold{k}"]] for k in range(rounds)],
                        "wan_paths": copies["warm"], "origin_port": x.ORIGIN_PORT, "delay_ms": DELAY_MS,
                        "cache_token": str(cache_token), "origin_token": str(origin_token),
                        "workers": WORKERS, "rounds": rounds, "events": files * events}
                (scratch / "args.json").write_text(json.dumps(args))
                env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                       "HOME": str(scratch), "X509_CERT_DIR": str(site.ca_dir), "PYTHONPATH": str(ROOT),
                       "BEARER_TOKEN_FILE": str(scratch / "worker.token"), "LANG": "C.UTF-8",
                       "XRD_CONNECTIONRETRY": "1"}
                ctx.log(f"  running the analysis: {rounds} rounds of local / cold / warm / WAN")
                r = site._run_in_netns([sys.executable, str(DRIVER), str(scratch / "args.json")], env=env,
                                       timeout=1800)
                out = r.stdout.decode(errors="replace")
                line = next((x_ for x_ in out.splitlines() if x_.startswith("REPORT ")), None)
                if r.returncode != 0 or line is None:
                    raise BenchmarkFailed(f"the analysis driver failed ({r.returncode}): "
                                          f"{r.stderr.decode(errors='replace')[-2000:]}")
                report = {k: statistics.median(v) for k, v in json.loads(line[len("REPORT "):]).items()}
            finally:
                site.stop()
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    case = f"ttbar selection, {files} files x {events} events, {WORKERS} Dask workers"
    local = f"the same workers reading the local files: {report['local']:,.0f} events/s"
    return [
        Row(TITLE, f"{case}, through the XCache with alice's token, cold cache", "events/s", report["cold"],
            local, report["local"]),
        Row(TITLE, f"{case}, through the XCache with alice's token, warm cache", "events/s", report["warm"],
            local, report["local"]),
        Row(TITLE, f"{case}, warm XCache vs the origin across a {DELAY_MS} ms round-trip link", "events/s",
            report["warm"], f"origin through the {DELAY_MS} ms relay: {report['wan']:,.0f} events/s", report["wan"]),
    ]
