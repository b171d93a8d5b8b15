"""Run casa_hub's benchmarks and write benchmarks/results.md.

    python -m benchmarks.run                 # all benchmarks (about a minute)
    python -m benchmarks.run --only mint     # some of them
    python -m benchmarks.run --quick         # shorter, noisier

Benchmarks are the ``bench_*.py`` modules in this directory (see ``benchmarks/__init__.py``). Those
that need the demo facility share one, started on free ports and stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks.common import ROOT, Context, Options, Row, table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.md"


def discover() -> list[ModuleType]:
    import benchmarks

    modules = [importlib.import_module(f"benchmarks.{m.name}")
               for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    names = ("jupyterhub", "pyjwt", "cryptography", "scitokens", "requests", "tornado")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def markdown(rows: list[Row], notes: list[str], options: Options, seconds: float, command: str,
             load: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# casa_hub benchmark results",
        "",
        f"- date: {now}",
        f"- machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.release()}",
        f"- python: {platform.python_version()} ({platform.python_implementation()})",
        f"- load average (1 min) before the run: {load:.2f} (other work on the machine skews the figures)",
        f"- packages: {versions()}",
        f"- command: `{command}`; run time {seconds:.0f} s",
        f"- settings: {options.duration:g} s per throughput candidate in {options.rounds} alternating rounds "
        f"(medians); {options.requests} HTTP requests per endpoint and mode, concurrency {options.concurrency}",
        "",
        "Ratios are value / baseline of the same run (for latencies above 1 means slower than the baseline, "
        "for throughput below 1 means slower).",
        "",
        table(rows),
        "",
        "## What is measured",
        "",
        *(f"- {n}" for n in notes),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    parser.add_argument("--duration", type=float, help="seconds per throughput candidate (default 1.5)")
    parser.add_argument("--requests", type=int, help="HTTP requests per endpoint and mode (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--via", choices=("hub", "proxy"), default="hub",
                        help="reach the hub API directly as servers do (default) or through the proxy")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"markdown file (default {RESULTS})")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the markdown file")
    args = parser.parse_args(argv)
    options = Options(concurrency=args.concurrency, via=args.via)
    if args.quick:
        options.duration, options.rounds, options.requests = 0.6, 3, 100
    options.duration = args.duration or options.duration
    options.requests = args.requests or options.requests

    modules = discover()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {m.TITLE for m in modules}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {[m.TITLE for m in modules]}")
    modules = [m for m in modules if not wanted or m.TITLE in wanted]

    ctx = Context(options, log=lambda msg: print(msg, flush=True))
    rows: list[Row] = []
    started, load = time.monotonic(), os.getloadavg()[0]
    try:
        for module in modules:
            print(f"==> {module.TITLE}", flush=True)
            t0 = time.monotonic()
            rows.extend(module.run(ctx))
            print(f"    ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        ctx.close()
    seconds = time.monotonic() - started
    print()
    print(table(rows))
    if not args.no_write:
        command = "scripts/bench.sh" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        args.output.write_text(markdown(rows, ctx.notes, options, seconds, command.strip(), load))
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
