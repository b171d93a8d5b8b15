"""Memory of the hub process with 1,000 users in the database and 200 active servers.

The two hubs of ``bench_login_storm`` (casa_hub: ``CasaOIDCAuthenticator`` + ``CasaFastSpawner``;
baseline: ``GenericOAuthenticator`` + ``FastSpawner``), one after the other, each from an empty
database: the hub's RSS is read idle after start, after 1,000 users were created through the admin
API, and after 200 of them signed in through the provider and started servers through the API
(``storm``). Each reading comes after a settle period, a ``gc.collect()`` in the hub (SIGUSR2, see
``hub_gc.install_gc_signal``) and is the median of five samples half a second apart.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from . import storm
from .common import BenchmarkFailed, Context, Row

TITLE = "memory"
ORDER = 60
NEEDS_FACILITY = True  # its own
USERS = 1000
ACTIVE = 200
CONCURRENCY = 20
MIB = 1024 * 1024

#: the modules of a Zero to JupyterHub hub (its image has oauthenticator and kubespawner), without and
#: with casa_hub's, measured in a fresh interpreter: the cost of having casa_hub installed
IMPORTS = {
    "plain": ["jupyterhub.app", "oauthenticator.generic", "kubespawner", "benchmarks.fast_spawner"],
    "casa": ["jupyterhub.app", "oauthenticator.generic", "kubespawner", "benchmarks.fast_spawner",
             "casa_hub.auth.authenticator", "benchmarks.casa_fast_spawner"],
}


def settled_memory(hub: psutil.Process, settle: float) -> dict[str, float]:
    """RSS and USS (MiB) of the hub after ``settle`` seconds, a gc in the hub and 1 s more."""
    time.sleep(settle)
    os.kill(hub.pid, signal.SIGUSR2)
    time.sleep(1.0)
    rss, uss = [], []
    for _ in range(5):
        info = hub.memory_full_info()
        rss.append(info.rss / MIB)
        uss.append(info.uss / MIB)
        time.sleep(0.5)
    return {"rss": statistics.median(rss), "uss": statistics.median(uss)}


def import_memory(modules: list[str]) -> float:
    """RSS (MiB) of a fresh interpreter after importing ``modules``."""
    code = ("import importlib, psutil\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(psutil.Process().memory_info().rss)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / MIB


def user_count(fac: Any, token: str) -> int:
    r = storm.admin(fac, token, "GET", "/users?limit=1", headers={"Accept": "application/jupyterhub-pagination+json"})
    r.raise_for_status()
    return int(r.json()["_pagination"]["total"])


def measure(ctx: Context, variant: str, state_dir: Path, settle: float) -> tuple[dict[str, dict[str, float]], list[str]]:
    names = [f"mem{i:04d}" for i in range(USERS)]
    active = storm.make_users("mem", ACTIVE)  # the first ACTIVE of ``names``, known to the provider
    readings: dict[str, dict[str, float]] = {}
    with storm.bench_hub(ctx, variant, active, state_dir) as fac:
        hub = psutil.Process(fac.procs["hub"].pid)
        readings["idle"] = settled_memory(hub, settle)
        for i in range(0, USERS, 250):
            r = storm.admin(fac, ctx.admin_token, "POST", "/users", json={"usernames": names[i:i + 250]})
            if r.status_code != 201:
                raise RuntimeError(f"creating users failed: HTTP {r.status_code} {r.text[:200]}")
        readings["users"] = settled_memory(hub, settle)
        result = storm.storm(fac.hub_url, active, CONCURRENCY)
        errors = list(result.errors)
        if (count := user_count(fac, ctx.admin_token)) != USERS:
            errors.append(f"the hub has {count} users, expected {USERS}")
        if (ready := len(storm.ready_servers(fac, ctx.admin_token))) != ACTIVE:
            errors.append(f"the hub has {ready} ready servers, expected {ACTIVE}")
        readings["servers"] = settled_memory(hub, settle)
    ctx.log(f"  {variant}: RSS " + ", ".join(f"{k} {v['rss']:.1f} MiB" for k, v in readings.items())
            + f"; {len(errors)} errors")
    return readings, errors


def run(ctx: Context) -> list[Row]:
    settle = 3.0 if ctx.options.quick else 10.0
    readings: dict[str, dict[str, dict[str, float]]] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="casa-bench-memory-") as tmp:
        for variant in ("plain", "casa"):
            readings[variant], errs = measure(ctx, variant, Path(tmp) / variant, settle)
            errors += [f"{variant}: {e}" for e in errs]
    imports = {variant: import_memory(modules) for variant, modules in IMPORTS.items()}
    label = storm.LABELS["plain"]
    casa, plain = readings["casa"], readings["plain"]
    rows = [
        Row(TITLE, f"hub RSS, {USERS:,} users in the database and {ACTIVE} active servers", "MiB",
            casa["servers"]["rss"], label, plain["servers"]["rss"]),
        Row(TITLE, f"hub USS, {USERS:,} users and {ACTIVE} active servers", "MiB",
            casa["servers"]["uss"], label, plain["servers"]["uss"]),
        Row(TITLE, f"hub RSS, {USERS:,} users in the database, no server", "MiB", casa["users"]["rss"], label,
            plain["users"]["rss"]),
        Row(TITLE, "hub RSS, idle after start (empty database)", "MiB", casa["idle"]["rss"], label,
            plain["idle"]["rss"]),
        Row(TITLE, f"growth from idle to {USERS:,} users and {ACTIVE} active servers", "MiB",
            casa["servers"]["rss"] - casa["idle"]["rss"], label, plain["servers"]["rss"] - plain["idle"]["rss"]),
        Row(TITLE, "fresh Python importing a Zero to JupyterHub hub's modules, with casa_hub's", "MiB",
            imports["casa"], "same without casa_hub's", imports["plain"]),
    ]
    ctx.notes.append(
        f"memory: the login_storm hubs, one after the other, each from an empty database. The hub process's "
        f"RSS and USS (psutil, `memory_full_info`) idle after start, after {USERS:,} users were created through "
        f"the admin API (`POST /hub/api/users`, 250 names per call), and after {ACTIVE} of them signed in "
        f"through the provider and started servers through the API ({CONCURRENCY} at a time); each reading "
        f"after {settle:g} s of settling, `gc.collect()` in the hub (SIGUSR2) and 1 s more, median of 5 "
        "samples 0.5 s apart. The proxy and provider processes are not counted. JupyterHub imports every "
        "installed authenticator and spawner entry point at start, so in one environment both hubs have "
        "casa_hub's (and kubespawner's) modules loaded: the hub rows show what casa_hub costs in use. The "
        f"last row shows what having it installed costs: a fresh interpreter importing {', '.join(IMPORTS['plain'])}, "
        f"and also {', '.join(IMPORTS['casa'][4:])} (RSS)."
    )
    if errors:
        raise BenchmarkFailed(f"{len(errors)} problems: {errors[:5]}", rows)
    return rows
