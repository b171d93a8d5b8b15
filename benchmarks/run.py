"""Run casa_hub's benchmarks and write benchmarks/results.md.

    python -m benchmarks.run                 # all benchmarks (about ten minutes on 2 cores)
    python -m benchmarks.run --only mint     # some of them
    python -m benchmarks.run --quick         # shorter, noisier

benchmarks/results.md keeps the rows of benchmarks not run this time (merged by benchmark name). A
benchmark that fails is reported, its rows (if it produced any) are written with the failure noted,
the others still run, and the exit status is 1.

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
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

import psutil

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks.common import (  # noqa: E402
    ROOT,
    BenchmarkFailed,
    Context,
    Options,
    cells,
    parse_table,
    table,
)

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


@dataclass
class Outcome:
    """One benchmark's part of a run: its table cells, run line and notes."""

    rows: list[list[str]]
    run: str  # "<date>, `<command>`, ..." (the line under "## Runs")
    notes: list[str] = field(default_factory=list)


def _sections(text: str) -> dict[str, list[str]]:
    """The ``- name: ...`` lines of each ``## `` section of a results file."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
        elif line.startswith("- ") and current:
            found.setdefault(current, []).append(line[2:])
    return found


def previous(path: Path) -> dict[str, Outcome]:
    """What an earlier results file holds, by benchmark name (empty if there is none)."""
    if not path.exists():
        return {}
    text = path.read_text()
    sections = _sections(text)
    outcomes: dict[str, Outcome] = {}
    for row in parse_table(text):
        outcomes.setdefault(row[0], Outcome([], "")).rows.append(row)
    for line in sections.get("Runs", []):
        name, _, rest = line.partition(": ")
        outcomes.setdefault(name, Outcome([], "")).run = rest
    for line in sections.get("What is measured", []):
        outcomes.setdefault(line.partition(": ")[0], Outcome([], "")).notes.append(line)
    return outcomes


def markdown(outcomes: dict[str, Outcome], order: list[str]) -> str:
    names = [n for n in order if n in outcomes]
    return "\n".join([
        "# casa_hub benchmark results",
        "",
        f"- machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.release()}",
        f"- python: {platform.python_version()} ({platform.python_implementation()})",
        f"- packages: {versions()}",
        "",
        "Each benchmark's rows come from its latest run (see \"Runs\": `--only` replaces only the rows of the "
        "benchmarks it runs). Ratios are value / baseline of the same run (for latencies above 1 means slower "
        "than the baseline, for throughput below 1 means slower). Other work on the machine skews the figures: "
        "\"Runs\" gives, per benchmark, the CPU other processes used while it ran.",
        "",
        table([cells for n in names for cells in outcomes[n].rows]),
        "",
        "## Runs",
        "",
        *(f"- {n}: {outcomes[n].run or 'run details not recorded'}" for n in names),
        "",
        "## What is measured",
        "",
        *(f"- {note}" for n in names for note in outcomes[n].notes),
        "",
    ])


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this run: this process, the
    processes it started and their reaped children)."""
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    me = psutil.Process()
    t = me.cpu_times()
    own = t.user + t.system + t.children_user + t.children_system
    for proc in me.children(recursive=True):
        try:
            c = proc.cpu_times()
        except psutil.Error:
            continue
        own += c.user + c.system + c.children_user + c.children_system
    return busy, own


def run_line(options: Options, command: str, seconds: float, load: float, other_cores: float | None,
             failure: str = "") -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    other = "" if other_cores is None else f"other processes used {other_cores:.2f} of the {os.cpu_count()} cores meanwhile; "
    line = (f"{now}, `{command}`, {seconds:.0f} s; load average (1 min) {load:.2f} before; {other}"
            f"settings: {'quick; ' if options.quick else ''}{options.duration:g} s per "
            f"throughput candidate in {options.rounds} rounds, {options.requests} HTTP requests per endpoint "
            f"and mode, concurrency {options.concurrency}")
    return f"{line}; **FAILED: {failure}**" if failure else line


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
    options = Options(concurrency=args.concurrency, via=args.via, quick=args.quick)
    if args.quick:
        options.duration, options.rounds, options.requests = 0.6, 3, 100
    options.duration = args.duration or options.duration
    options.requests = args.requests or options.requests

    modules = discover()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {m.TITLE for m in modules}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {[m.TITLE for m in modules]}")
    order = [m.TITLE for m in modules]
    modules = [m for m in modules if not wanted or m.TITLE in wanted]
    command = ("scripts/bench.sh " + " ".join(argv if argv is not None else sys.argv[1:])).strip()

    ctx = Context(options, log=lambda msg: print(msg, flush=True))
    fresh: dict[str, Outcome] = {}
    failed: list[str] = []
    try:
        for module in modules:
            print(f"==> {module.TITLE}", flush=True)
            t0, load, cpu0 = time.monotonic(), os.getloadavg()[0], cpu_seconds()
            ctx.notes = []
            failure = ""
            try:
                rows = module.run(ctx)
            except BenchmarkFailed as e:
                rows, failure = e.rows, str(e)
            except Exception as e:
                traceback.print_exc()
                rows, failure = [], f"{type(e).__name__}: {e}"
            seconds = time.monotonic() - t0
            cpu1 = cpu_seconds()
            # too short a run gives no meaningful share (CPU times tick in 10 ms steps)
            other = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / seconds if seconds >= 1 else None
            if failure:
                failed.append(module.TITLE)
                print(f"    FAILED: {failure}", flush=True)
            print(f"    ({seconds:.1f} s" + (f"; other processes used {other:.2f} cores meanwhile)" if other is not None
                                          else ")"), flush=True)
            fresh[module.TITLE] = Outcome([cells(r) for r in rows],
                                          run_line(options, command, seconds, load, other, failure),
                                          list(ctx.notes))
    finally:
        ctx.close()
    print()
    print(table([c for o in fresh.values() for c in o.rows]))
    if not args.no_write:
        merged = {**previous(args.output), **fresh}
        args.output.write_text(markdown(merged, order))
        print(f"\nwritten to {args.output}")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
