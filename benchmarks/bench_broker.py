"""Token broker latency over HTTP on loopback, beside reading auth_state through the hub's REST API.

The caller is alice with an API token carrying exactly the scopes of a server's ``JUPYTERHUB_API_TOKEN``
(``users:activity!user``, ``custom:casa-tokens:renew!user``). That token can call ``GET /hub/api/user``
but cannot read auth_state: the model includes ``auth_state`` only for ``admin:auth_state``, which the
``user`` role and servers' tokens do not have. So the baseline for "fetch my stored token from the hub"
is an admin service's ``GET /hub/api/users/alice`` (it has ``admin:auth_state``), and the user's own
``GET /hub/api/user`` is shown as the floor of an authenticated hub request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from .common import Context, Row, http_login, percentiles

TITLE = "broker"
ORDER = 30
NEEDS_FACILITY = True
ROUND = 50  # requests per endpoint before moving to the next one (endpoints alternate)


def _request(method: str, url: str, token: str) -> Callable[[requests.Session], requests.Response]:
    headers = {"Authorization": f"token {token}"}
    return lambda s: s.request(method, url, headers=headers, timeout=30)


def _timed(call: Callable[[requests.Session], requests.Response], session: requests.Session,
           failures: list[int]) -> float:
    start = time.perf_counter()
    r = call(session)
    elapsed = (time.perf_counter() - start) * 1000
    if r.status_code != 200:
        failures.append(r.status_code)
    return elapsed


def _sequential(calls: dict[str, Callable], total: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    busy: dict[str, float] = dict.fromkeys(calls, 0.0)
    failures: list[int] = []
    sessions = {name: requests.Session() for name in calls}
    for _ in range(0, total, ROUND):
        for name, call in calls.items():
            start = time.perf_counter()
            samples[name].extend(_timed(call, sessions[name], failures) for _ in range(ROUND))
            busy[name] += time.perf_counter() - start
    if failures:
        raise RuntimeError(f"unexpected HTTP status codes during the benchmark: {sorted(set(failures))}")
    return samples, {name: len(samples[name]) / busy[name] for name in calls}


def _concurrent(calls: dict[str, Callable], total: int, workers: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    busy: dict[str, float] = dict.fromkeys(calls, 0.0)
    failures: list[int] = []
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    with ThreadPoolExecutor(workers) as pool:
        for _ in range(0, total, ROUND * 2):
            for name, call in calls.items():
                start = time.perf_counter()
                samples[name].extend(pool.map(lambda _, c=call: _timed(c, session(), failures), range(ROUND * 2)))
                busy[name] += time.perf_counter() - start
    if failures:
        raise RuntimeError(f"unexpected HTTP status codes during the benchmark: {sorted(set(failures))}")
    return samples, {name: len(samples[name]) / busy[name] for name in calls}


def run(ctx: Context) -> list[Row]:
    fac = ctx.facility()
    api = ctx.hub_api_url()
    r = http_login(fac.hub_url, "alice", fac.password("alice"))
    if r.status_code != 200:
        raise RuntimeError(f"alice could not sign in to the demo hub (HTTP {r.status_code})")
    r = requests.post(f"{fac.hub_url}/hub/api/users/alice/tokens", timeout=30,
                      headers={"Authorization": f"token {ctx.admin_token}"},
                      json={"scopes": ["users:activity!user=alice", "custom:casa-tokens:renew!user=alice"],
                            "note": "benchmark: scopes of a server's token"})
    r.raise_for_status()
    alice = r.json()["token"]
    calls = {
        "broker": _request("POST", f"{api}/casa/tokens/xcache", alice),
        "admin": _request("GET", f"{api}/users/alice", ctx.admin_token),
        "user": _request("GET", f"{api}/user", alice),
    }
    with requests.Session() as s:  # what each endpoint returns, checked once
        assert "token" in calls["broker"](s).json(), "the broker returned no token"
        assert "auth_state" in calls["admin"](s).json(), "the admin service cannot read auth_state"
        assert "auth_state" not in calls["user"](s).json(), "a server-scoped token can read auth_state"
        for call in calls.values():  # warm up connections and the hub's caches
            for _ in range(20):
                call(s)
    n, workers = ctx.options.requests, ctx.options.concurrency
    labels = {"admin": "GET /users/alice with auth_state (admin service)",
              "user": "GET /user (same credential, no auth_state)"}
    rows: list[Row] = []
    for mode, (samples, rates) in (("sequential", _sequential(calls, n)),
                                   (f"{workers} concurrent", _concurrent(calls, n, workers))):
        figures = {name: dict(percentiles(s), **{"req/s": rates[name]}) for name, s in samples.items()}
        ctx.log(f"  {mode}: " + ", ".join(f"{name} p50 {f['p50 ms']:.2f} ms" for name, f in figures.items()))
        case = f"POST /casa/tokens/xcache, {mode} (n={len(samples['broker'])})"
        for metric in ("p50 ms", "p95 ms", "p99 ms", "req/s"):
            rows.append(Row("broker", case, metric, figures["broker"][metric], labels["admin"],
                            figures["admin"][metric]))
        for metric in ("p50 ms", "req/s"):
            rows.append(Row("broker", case, metric, figures["broker"][metric], labels["user"],
                            figures["user"][metric]))
    ctx.notes.append(
        f"broker: HTTP on loopback to the hub's {'proxy' if ctx.options.via == 'proxy' else 'own API URL'} "
        f"(`{'proxy' if ctx.options.via == 'proxy' else 'JUPYTERHUB_API_URL'}`), keep-alive sessions, "
        "latency seen by a Python `requests` client on the same machine (client time included for all "
        f"endpoints alike); the endpoints alternate in blocks of {ROUND} (sequential) or {2 * ROUND} "
        "(concurrent). The broker authenticates the token, checks the scope and rate limit, mints, "
        "decrypts auth_state, stores the token and encrypts and saves auth_state again. A server's own "
        "token cannot read auth_state (`admin:auth_state` is not in the `user` role or in servers' token "
        "scopes), so the baseline for reading the stored token is the admin service's "
        "`GET /hub/api/users/alice`; `GET /hub/api/user` with alice's token is the floor of any "
        "authenticated hub call."
    )
    return rows
