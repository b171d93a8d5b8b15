"""Sign-in storms: many users sign in through the real OIDC provider and start servers at once.

Shared by ``bench_login_storm`` and ``bench_memory``. Two hubs are compared, each started by
``DemoFacility`` with its own provider holding the same generated users:

- ``casa``: the demo's ``CasaOIDCAuthenticator`` with ``CasaFastSpawner`` (``hub_configs/casa.py``);
- ``plain``: oauthenticator's ``GenericOAuthenticator`` with ``FastSpawner`` (``hub_configs/plain.py``).

One user's session is what a browser does: the hub's OAuth login, the provider's form, the redirects
back, the hub's home page, then ``POST /hub/api/users/<name>/server`` with the session's cookie and
XSRF token, until the hub says the server is ready (201 at once, or 202 then polling the user's own
model), then one request through the proxy to the server.
"""

from __future__ import annotations

import re
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests

from .casa_settings import GROUP
from .common import ROOT, Context

HUB_CONFIGS = Path(__file__).resolve().parent / "hub_configs"
VARIANTS = {"plain": HUB_CONFIGS / "plain.py", "casa": HUB_CONFIGS / "casa.py"}
LABELS = {
    "casa": "CasaOIDCAuthenticator + CasaFastSpawner",
    "plain": "GenericOAuthenticator + FastSpawner",
}
SPAWN_TIMEOUT = 120.0


class StormError(Exception):
    """One user's sign-in or server start went wrong; the message has no token or code."""


@dataclass
class Sample:
    login_s: float  # from the first request to the hub's home page after the provider's redirects
    ready_s: float  # from the first request until the hub reports the server ready


@dataclass
class StormResult:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used by each process during the storm

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.wall_s if self.wall_s else 0.0


def make_users(prefix: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """Provider users ``<prefix>0000`` ... in the group that may use both hubs."""
    return [{"username": f"{prefix}{i:04d}", "password": secrets.token_urlsafe(12), "name": f"Bench user {i}",
             "email": f"{prefix}{i:04d}@bench.invalid", "groups": [GROUP]} for i in range(start, start + count)]


@contextmanager
def bench_hub(ctx: Context, variant: str, users: list[dict[str, Any]], state_dir: Path) -> Iterator[Any]:
    """A running facility of ``variant`` whose provider knows ``users`` (kept in memory)."""
    from benchmarks.common import ADMIN_OVERLAY
    from casa_hub.demo.facility import DemoFacility, free_port

    fac = DemoFacility(
        state_dir, hub_port=free_port(), idp_port=free_port(),
        extra_env={"CASA_TEST_ADMIN_TOKEN": ctx.admin_token},
        extra_hub_config=[ADMIN_OVERLAY, VARIANTS[variant]],
        idp_overrides={"users": users, "storage_file": None},
        progress=lambda msg: ctx.log(f"  {variant} facility: {msg}"),
    )
    with fac:
        yield fac


def _helpers() -> Any:
    tests_dir = str(ROOT / "tests" / "support")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import helpers

    return helpers


def _where(r: requests.Response) -> str:
    """Status and path of a response, without the query (a callback's holds the code)."""
    return f"HTTP {r.status_code} at {urlsplit(r.url).path}"


def sign_in_and_start(hub_url: str, user: dict[str, Any]) -> Sample:
    helpers = _helpers()
    name = user["username"]
    t0 = time.perf_counter()
    try:
        s, form = helpers.start_login(hub_url)
    except AssertionError as e:
        raise StormError(f"no login form: {str(e).split('?')[0]}") from None
    r = helpers.submit_login(s, form, name, user["password"])
    if r.status_code != 200 or urlsplit(r.url).path != "/hub/home":
        raise StormError(f"sign-in ended with {_where(r)}")
    t_login = time.perf_counter()
    headers = {"X-XSRFToken": s.cookies.get("_xsrf", "")}
    r = s.post(f"{hub_url}/hub/api/users/{name}/server", headers=headers, timeout=SPAWN_TIMEOUT)
    if r.status_code == 202:
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while True:
            model = s.get(f"{hub_url}/hub/api/users/{name}", headers=headers, timeout=30)
            server = model.json().get("servers", {}).get("") if model.status_code == 200 else None
            if server and server.get("ready"):
                break
            if model.status_code != 200 or not server or time.monotonic() > deadline:
                raise StormError(f"server not ready: {_where(model)}, server {'pending' if server else 'gone'}")
            time.sleep(0.05)
    elif r.status_code != 201:
        raise StormError(f"server start refused: {_where(r)}: {_message(r)}")
    t_ready = time.perf_counter()
    r = s.get(f"{hub_url}/user/{name}/", allow_redirects=False, timeout=30)
    if r.status_code != 200 or r.text != "ok\n":
        raise StormError(f"the server does not answer through the proxy: {_where(r)}")
    return Sample(t_login - t0, t_ready - t0)


def _message(r: requests.Response) -> str:
    try:
        return str(r.json().get("message", ""))[:200]
    except ValueError:
        return ""


def processes(fac: Any) -> dict[str, psutil.Process]:
    """The facility's hub, proxy and provider processes, and this process (the clients)."""
    hub = psutil.Process(fac.procs["hub"].pid)
    found = {"hub": hub, "provider": psutil.Process(fac.procs["idp"].pid), "client": psutil.Process()}
    for child in hub.children():
        if "configurable-http-proxy" in " ".join(child.cmdline()):
            found["proxy"] = child
    return found


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    times = {name: p.cpu_times() for name, p in procs.items()}
    return {name: t.user + t.system for name, t in times.items()}


def storm(hub_url: str, users: list[dict[str, Any]], concurrency: int,
          procs: dict[str, psutil.Process] | None = None) -> StormResult:
    """All ``users`` sign in and start their servers, ``concurrency`` at a time; with ``procs``,
    the CPU time each of them used meanwhile is recorded."""
    result = StormResult()
    cpu_before = cpu_seconds(procs or {})
    lock = threading.Lock()

    def one(user: dict[str, Any]) -> None:
        try:
            sample = sign_in_and_start(hub_url, user)
        except (StormError, requests.RequestException, ValueError) as e:
            with lock:
                result.errors.append(f"{user['username']}: {type(e).__name__}: {e}")
            return
        with lock:
            result.samples.append(sample)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, users))
    result.wall_s = time.perf_counter() - start
    result.cpu_s = {name: t - cpu_before[name] for name, t in cpu_seconds(procs or {}).items()}
    return result


# ---- the hub's side ----------------------------------------------------------------------------

def admin(fac: Any, token: str, method: str, path: str, headers: dict[str, str] | None = None,
          **kw: Any) -> requests.Response:
    """A request to the hub's REST API (``path`` after ``/hub/api``) as the admin service."""
    return requests.request(method, f"{fac.hub_url}/hub/api{path}", timeout=120,
                            headers={"Authorization": f"token {token}", **(headers or {})}, **kw)


def ready_servers(fac: Any, token: str) -> set[str]:
    """Names of users whose default server the hub reports ready."""
    names: set[str] = set()
    offset = 0
    while True:
        r = admin(fac, token, "GET", f"/users?state=ready&offset={offset}&limit=200",
                  headers={"Accept": "application/jupyterhub-pagination+json"})
        r.raise_for_status()
        doc = r.json()
        names.update(u["name"] for u in doc["items"] if (u.get("servers", {}).get("") or {}).get("ready"))
        if not doc["_pagination"].get("next"):
            return names
        offset = doc["_pagination"]["next"]["offset"]


def stop_servers(fac: Any, token: str, names: list[str], concurrency: int = 10) -> None:
    """Stop the named users' servers and wait until the hub reports none of them active."""
    def stop(name: str) -> None:
        admin(fac, token, "DELETE", f"/users/{name}/server").raise_for_status()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(stop, names))
    deadline = time.monotonic() + 120
    while ready_servers(fac, token) & set(names):
        if time.monotonic() > deadline:
            raise RuntimeError("servers still active 120 s after they were stopped")
        time.sleep(0.2)


_METRIC = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def hub_metric_mean(fac: Any, token: str, histogram: str, labels: str) -> float | None:
    """Mean of a Prometheus histogram of the hub (``<histogram>_sum / _count`` for the series
    whose labels include ``labels``), e.g. JupyterHub's own spawn duration."""
    r = requests.get(f"{fac.hub_url}/hub/metrics", headers={"Authorization": f"token {token}"}, timeout=60)
    r.raise_for_status()
    found: dict[str, float] = {}
    for line in r.text.splitlines():
        m = _METRIC.match(line)
        if m and m["name"] in (f"{histogram}_sum", f"{histogram}_count") and labels in (m["labels"] or ""):
            found[m["name"].rsplit("_", 1)[1]] = found.get(m["name"].rsplit("_", 1)[1], 0.0) + float(m["value"])
    if not found.get("count"):
        return None
    return found["sum"] / found["count"]


def pooled(results: list[StormResult]) -> StormResult:
    """Several storms' samples and errors together; the throughput is over their summed wall time."""
    cpu: dict[str, float] = {}
    for r in results:
        for name, t in r.cpu_s.items():
            cpu[name] = cpu.get(name, 0.0) + t
    return StormResult([s for r in results for s in r.samples], [e for r in results for e in r.errors],
                       sum(r.wall_s for r in results), cpu)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
