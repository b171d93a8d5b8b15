"""What a token costs the hub: ``POST /hub/api/casa/tokens/xcache`` beside ``GET /hub/api/user``,
with the same 50 users' tokens (each with exactly a server's scopes), 1, 4 and 16 concurrent clients,
the two endpoints alternating in blocks within one run. ``GET /hub/api/user`` is the hub's cheapest
authenticated call: token lookup, scopes, a JSON model. The broker adds the rate limit, the session
check (in memory after the first call), the ES256 mint, the audit line and the hand-over to running
servers, and writes no database row (casa_hub.tokens.ledger).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from .common import Context, Row, percentiles

TITLE = "broker-cost"
ORDER = 31
NEEDS_FACILITY = True
USERS = 50
BLOCK = 100  # requests per endpoint before switching to the other
CLIENTS = (1, 4, 16)


def _users(ctx: Context, api: str) -> list[str]:
    """50 hub users in the physicists group, each with a token of a server's scopes."""
    admin = {"Authorization": f"token {ctx.admin_token}"}
    names = [f"cost{i:02d}" for i in range(USERS)]
    requests.post(f"{api}/users", json={"usernames": names}, headers=admin, timeout=60)  # 201, or 409 if there
    r = requests.post(f"{api}/groups/physicists/users", json={"users": names}, headers=admin, timeout=60)
    if r.status_code == 404:
        requests.post(f"{api}/groups/physicists", headers=admin, timeout=30).raise_for_status()
        r = requests.post(f"{api}/groups/physicists/users", json={"users": names}, headers=admin, timeout=60)
    r.raise_for_status()
    tokens = []
    for name in names:
        r = requests.post(f"{api}/users/{name}/tokens", headers=admin, timeout=30, json={
            "scopes": [f"users:activity!user={name}", f"custom:casa-tokens:renew!user={name}"],
            "note": "benchmark: scopes of a server's token"})
        r.raise_for_status()
        tokens.append(r.json()["token"])
    return tokens


def _measure(calls: dict[str, tuple[str, str]], tokens: list[str], clients: int, total: int
             ) -> dict[str, tuple[list[float], float]]:
    """Per endpoint: latencies (ms) and throughput (requests per second of wall time in its blocks)."""
    local = threading.local()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    busy = dict.fromkeys(calls, 0.0)
    failures: list[int] = []
    cycle = itertools.cycle(tokens)
    lock = threading.Lock()

    def one(method: str, url: str) -> float:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        with lock:
            token = next(cycle)
        start = time.perf_counter()
        r = local.s.request(method, url, headers={"Authorization": f"token {token}"}, timeout=30)
        elapsed = (time.perf_counter() - start) * 1000
        if r.status_code != 200:
            failures.append(r.status_code)
        return elapsed

    with ThreadPoolExecutor(clients) as pool:
        for _ in range(0, total, BLOCK):
            for name, (method, url) in calls.items():
                start = time.perf_counter()
                samples[name].extend(pool.map(lambda _, m=method, u=url: one(m, u), range(BLOCK)))
                busy[name] += time.perf_counter() - start
    if failures:
        raise RuntimeError(f"unexpected HTTP status codes: {sorted(set(failures))}")
    return {name: (samples[name], len(samples[name]) / busy[name]) for name in calls}


def run(ctx: Context) -> list[Row]:
    ctx.facility()
    api = ctx.hub_api_url()
    tokens = _users(ctx, api)
    calls = {"broker": ("POST", f"{api}/casa/tokens/xcache"), "user": ("GET", f"{api}/user")}
    _measure(calls, tokens, 4, BLOCK)  # warm up: sessions, caches, the first-call session check
    total = max(BLOCK * 2, ctx.options.requests)
    rows: list[Row] = []
    for clients in CLIENTS:
        result = _measure(calls, tokens, clients, total)
        (broker, broker_rate), (user, user_rate) = result["broker"], result["user"]
        b, u = percentiles(broker), percentiles(user)
        ctx.log(f"  {clients} client(s): broker {broker_rate:.0f} req/s p99 {b['p99 ms']:.1f} ms; "
                f"GET /user {user_rate:.0f} req/s p99 {u['p99 ms']:.1f} ms; ratio {broker_rate / user_rate:.2f}")
        case = f"POST /casa/tokens/xcache, {clients} client(s), {USERS} users (n={len(broker)})"
        baseline = "GET /hub/api/user, same tokens and clients"
        rows.append(Row("broker-cost", case, "req/s", broker_rate, baseline, user_rate))
        for metric in ("p50 ms", "p99 ms"):
            rows.append(Row("broker-cost", case, metric, b[metric], baseline, u[metric]))
    ctx.notes.append(
        "broker-cost: the goal is a throughput ratio of at least 0.9 against `GET /hub/api/user` and a "
        "broker p99 of at most 20 ms at 4 clients; clients are Python threads on the same 2 cores as the hub "
        f"(their time is in both columns); the endpoints alternate in blocks of {BLOCK}.")
    return rows
