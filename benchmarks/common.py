"""What the benchmarks share: result rows, timing helpers, the demo facility they run against."""

from __future__ import annotations

import json
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: the test overlay giving the benchmarks an admin API service (CASA_TEST_ADMIN_TOKEN)
ADMIN_OVERLAY = ROOT / "tests" / "support" / "admin_service_config.py"


@dataclass(frozen=True)
class Row:
    """One measured figure beside the same run's baseline figure (ratio = value / baseline)."""

    benchmark: str
    case: str
    metric: str  # e.g. "tokens/s", "p50 ms"
    value: float
    baseline: str = ""
    baseline_value: float | None = None

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


class BenchmarkFailed(RuntimeError):
    """A benchmark ran but what it measured went wrong (e.g. failed logins). ``rows`` are its figures,
    written with the failure noted; the run exits non-zero."""

    def __init__(self, message: str, rows: list[Row] | None = None) -> None:
        super().__init__(message)
        self.rows = list(rows or [])


@dataclass
class Options:
    duration: float = 1.5  # seconds of work per measured function (throughput benchmarks)
    rounds: int = 3  # the candidates of a comparison alternate in this many rounds; medians reported
    requests: int = 300  # HTTP requests per endpoint and mode
    concurrency: int = 8
    via: str = "hub"  # "hub": the hub's API URL (what servers use), "proxy": through the proxy
    quick: bool = False  # ``--quick``: benchmarks with their own sizes use their shorter variant


@dataclass
class Context:
    """Handed to each benchmark's ``run``. ``facility()`` starts the demo facility on first use."""

    options: Options
    log: Callable[[str], None] = print
    admin_token: str = field(default_factory=lambda: secrets.token_hex(32))
    notes: list[str] = field(default_factory=list)
    _facility: Any = None
    _tmp: tempfile.TemporaryDirectory | None = None

    def facility(self) -> Any:
        if self._facility is None:
            from casa_hub.demo.facility import DemoFacility, free_port

            self._tmp = tempfile.TemporaryDirectory(prefix="casa-bench-")
            fac = DemoFacility(
                Path(self._tmp.name) / "facility",
                hub_port=free_port(),
                idp_port=free_port(),
                extra_env={"CASA_TEST_ADMIN_TOKEN": self.admin_token},
                # the broker's per-user limit would otherwise cap the measurement
                site_overrides={"tokens": {"broker_rate_per_minute": 6000000}},
                extra_hub_config=[ADMIN_OVERLAY,
                                  ROOT / "benchmarks" / "hub_configs" / "shared.py"],
                progress=lambda msg: self.log(f"  facility: {msg}"),
            )
            self._facility = fac
            fac.start()
        return self._facility

    def hub_api_url(self) -> str:
        """The hub's REST API as a server reaches it (``JUPYTERHUB_API_URL``) or through the proxy."""
        fac = self.facility()
        if self.options.via == "proxy":
            return f"{fac.hub_url}/hub/api"
        settings = json.loads((fac.state_dir / "settings.json").read_text())
        return f"http://127.0.0.1:{settings['hub_api_port']}/hub/api"

    def close(self) -> None:
        if self._facility is not None:
            self._facility.stop()
            self._facility = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def http_login(hub_url: str, username: str, password: str) -> Any:
    """Sign in through the demo provider's form (the tests' helper), returning the response."""
    tests_dir = str(ROOT / "tests" / "support")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from helpers import http_login as login

    return login(hub_url, username, password)[1]


def compare_throughput(candidates: dict[str, Callable[[], Any]], duration: float, rounds: int) -> dict[str, float]:
    """Calls per second of each candidate: they alternate in ``rounds`` slices of ``duration / rounds``
    seconds each (so drifts of the machine hit all alike); the median of the slices is returned."""
    for fn in candidates.values():  # warm up: caches, lazy imports, key parsing
        for _ in range(20):
            fn()
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    slice_seconds = duration / rounds
    for _ in range(rounds):
        for name, fn in candidates.items():
            calls, start = 0, time.perf_counter()
            while True:
                for _ in range(8):
                    fn()
                calls += 8
                elapsed = time.perf_counter() - start
                if elapsed >= slice_seconds:
                    break
            rates[name].append(calls / elapsed)
    return {name: statistics.median(r) for name, r in rates.items()}


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {"p50 ms": q[49], "p95 ms": q[94], "p99 ms": q[98]}


# ---- output ---------------------------------------------------------------------------------------

def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


HEAD = ["benchmark", "case", "metric", "value", "baseline (same run)", "baseline value", "ratio"]


def cells(row: Row) -> list[str]:
    """A row as the table's cells."""
    return [row.benchmark, row.case, row.metric, _fmt(row.value), row.baseline, _fmt(row.baseline_value),
            f"{row.ratio:.2f}x" if row.ratio is not None else ""]


def table(rows: list[Row] | list[list[str]]) -> str:
    """A markdown table (of rows, or of cells as ``cells`` gives them), padded so that it also reads
    well in a terminal."""
    body = [cells(r) if isinstance(r, Row) else list(r) for r in rows]
    body = [[c.replace("|", "\\|") for c in b] for b in body]
    widths = [max(len(str(c)) for c in col) for col in zip(HEAD, *body, strict=False)]
    right = {3, 5, 6}

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(HEAD), sep, *(line(b) for b in body)])


def parse_table(text: str) -> list[list[str]]:
    """The body cells of the first table ``table`` wrote into ``text`` (for merging runs)."""
    found: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            if found:
                break
            continue
        parts = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        found.append([p.strip().replace("\\|", "|") for p in parts])
    body = found[2:]  # after the header and the separator
    return [row for row in body if len(row) == len(HEAD)]
