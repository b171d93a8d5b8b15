"""Time from login to the first result computed on a Dask cluster: pre-created vs made by hand.

Each measurement is one user session from nothing: sign in through the provider's form, start the
server, wait until it is ready, then run the notebook's code in a new Python process with the
server's own environment (imports included, as in a fresh kernel), until the first result:

- **pre-created**: the hub created the user's cluster at spawn (``casa_hub.dask.get_client()``,
  one ``submit(...).result()``);
- **baseline, by hand**: the spawn asks for no cluster (``user_options`` ``dask_cluster_options:
  false``); the notebook creates one as users did before (``Gateway().new_cluster()``, ``scale(1)``
  like the pre-created one's ``initial_workers``, ``get_client()``, the same ``submit``).

The server is stopped after each measurement (which also stops its cluster); the two kinds
alternate in rounds after one unmeasured warm-up of each. Backends are the entries of ``VARIANTS``:
each starts a facility whose hub runs ``DaskIntegration`` against a gateway with that backend
(``local`` here; a batch backend adds its own entry).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psutil
import requests

from .common import ROOT, Context, Row

TITLE = "dask"
ORDER = 40
NEEDS_FACILITY = True  # its own: the shared facility runs without the Dask Gateway
USER = "alice"
ROUNDS = 5  # sessions of each kind (medians); each session takes about 5-10 s

PRECREATED = r"""
import json, time
t0 = time.perf_counter()
from casa_hub.dask import get_client
client = get_client()
assert client.submit(sum, range(10)).result() == 45
print(json.dumps({"notebook_s": time.perf_counter() - t0}))
"""

BY_HAND = r"""
import json, time
t0 = time.perf_counter()
from dask_gateway import Gateway
cluster = Gateway().new_cluster()
cluster.scale(1)
client = cluster.get_client()
assert client.submit(sum, range(10)).result() == 45
print(json.dumps({"notebook_s": time.perf_counter() - t0}))
cluster.shutdown()
"""


@contextmanager
def local_backend(ctx: Context) -> Iterator[Any]:
    """The demo facility with its embedded Dask Gateway (local backend)."""
    from benchmarks.common import ADMIN_OVERLAY
    from casa_hub.demo.facility import DemoFacility, free_port

    with tempfile.TemporaryDirectory(prefix="casa-bench-dask-") as tmp:
        fac = DemoFacility(
            Path(tmp) / "facility", hub_port=free_port(), idp_port=free_port(),
            extra_env={"CASA_TEST_ADMIN_TOKEN": ctx.admin_token}, dask=True,
            extra_hub_config=[ADMIN_OVERLAY],
            progress=lambda msg: ctx.log(f"  facility (dask): {msg}"),
        )
        with fac:
            yield fac


#: backend name -> a context manager giving a running facility whose hub pre-creates clusters in a
#: gateway with that backend, administered with ``ctx.admin_token``: an object with ``hub_url``,
#: ``password(user)`` and, when the clusters run as local processes, ``descendants()``. A batch
#: backend adds e.g. ``VARIANTS["slurm"] = slurm_backend`` (its facility's DaskIntegration pointing
#: at a gateway with the Slurm backend)
VARIANTS: dict[str, Callable[[Context], AbstractContextManager[Any]]] = {"local": local_backend}


def _helpers() -> Any:
    tests_dir = str(ROOT / "tests" / "support")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import helpers

    return helpers


def _user_model(fac: Any, admin_token: str) -> dict:
    r = requests.get(f"{fac.hub_url}/hub/api/users/{USER}", headers={"Authorization": f"token {admin_token}"},
                     timeout=30)
    r.raise_for_status()
    return r.json()


def _wait(check: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()):
            return found
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")


def _session(fac: Any, admin_token: str, precreate: bool) -> dict[str, float]:
    """One measured session; returns seconds: ``ready`` (login → server ready), ``total`` (login →
    first result), ``notebook`` (inside the notebook process: its code until the result)."""
    helpers = _helpers()
    t0 = time.perf_counter()
    s, r = helpers.http_login(fac.hub_url, USER, fac.password(USER))
    if r.status_code != 200:
        raise RuntimeError(f"{USER} could not sign in (HTTP {r.status_code})")
    options = {} if precreate else False
    r = s.post(f"{fac.hub_url}/hub/api/users/{USER}/server", json={"user_options": {"dask_cluster_options": options}},
               headers={"X-XSRFToken": s.cookies.get("_xsrf", "")}, timeout=120)
    if r.status_code not in (201, 202):
        raise RuntimeError(f"starting {USER}'s server failed: HTTP {r.status_code} {r.text[:200]}")

    def ready() -> dict | None:
        server = _user_model(fac, admin_token).get("servers", {}).get("")
        return server if server and server.get("ready") else None

    server = _wait(ready, f"{USER}'s server start")
    t_ready = time.perf_counter()
    env = helpers.read_server_environ(server["state"]["pid"])
    if precreate != bool(env.get("CASA_DASK_CLUSTER")):
        raise RuntimeError(f"expected {'a' if precreate else 'no'} pre-created cluster, env says otherwise")
    with tempfile.TemporaryDirectory(prefix="casa-bench-notebook-") as cwd:
        done = subprocess.run([sys.executable, "-c", PRECREATED if precreate else BY_HAND], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=300)
    t_result = time.perf_counter()
    if done.returncode != 0:
        raise RuntimeError(f"the notebook's Dask code failed:\n{done.stderr[-2000:]}")
    notebook = json.loads(done.stdout.strip().splitlines()[-1])["notebook_s"]
    requests.delete(f"{fac.hub_url}/hub/api/users/{USER}/server", headers={"Authorization": f"token {admin_token}"},
                    timeout=60).raise_for_status()
    _wait(lambda: not _user_model(fac, admin_token).get("servers"), f"{USER}'s server stop")
    _wait(lambda: _cluster_processes(fac) == 0, "the end of the session's cluster processes")
    return {"ready": t_ready - t0, "total": t_result - t0, "notebook": notebook}


def _cluster_processes(fac: Any) -> int:
    """Scheduler and worker processes still running under the facility's gateway (a session's
    cluster must be gone before the next session starts, or it would compete for the CPU)."""
    count = 0
    for proc in getattr(fac, "descendants", list)():
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        count += " scheduler " in f"{cmd} " or " worker " in f"{cmd} "
    return count


def run(ctx: Context) -> list[Row]:
    rounds = ROUNDS
    rows: list[Row] = []
    for backend, start in VARIANTS.items():
        with start(ctx) as fac:
            for precreate in (True, False):  # warm-up: page cache, first imports, first cluster
                _session(fac, ctx.admin_token, precreate)
            samples: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for _ in range(rounds):
                for precreate in (True, False):
                    samples[precreate].append(_session(fac, ctx.admin_token, precreate))

        def median(precreate: bool, key: str, samples: dict = samples) -> float:
            return statistics.median(s[key] for s in samples[precreate])

        ctx.log(f"  {backend}: login → first result {median(True, 'total'):.2f} s pre-created, "
                f"{median(False, 'total'):.2f} s by hand")
        case = f"login → first result, {backend} backend (n={rounds})"
        baseline = "cluster created by hand after the notebook opened"
        rows += [
            Row(TITLE, case, "median s", median(True, "total"), baseline, median(False, "total")),
            Row(TITLE, f"login → server ready, {backend} backend (n={rounds})", "median s",
                median(True, "ready"), "same, spawn without pre-creation", median(False, "ready")),
            Row(TITLE, f"notebook code to first result, {backend} backend (n={rounds})", "median s",
                median(True, "notebook"), "new_cluster + scale(1) + get_client + compute", median(False, "notebook")),
        ]
    ctx.notes.append(
        "dask: one user session per measurement, from nothing: sign-in through the provider's form, server "
        "start, then the notebook's code in a new Python process with the server's environment (imports "
        "included) until the first `submit(...).result()`; the server (and with it its cluster) is stopped "
        "after each. Pre-created: the hub created the cluster at spawn (1 worker requested once it runs) and "
        "the notebook calls `casa_hub.dask.get_client()`. Baseline: the spawn asks for no cluster and the "
        "notebook runs `Gateway().new_cluster()`, `scale(1)`, `get_client()`. The kinds alternate in rounds "
        f"after one unmeasured warm-up each; medians of {rounds} rounds. 'login → server ready' shows what "
        "pre-creation adds to the spawn itself. Local backend: scheduler and worker are processes on the "
        "same 2-core machine."
    )
    return rows
