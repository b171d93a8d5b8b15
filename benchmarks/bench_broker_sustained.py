"""The token broker under sustained load: 200 simulated servers renewing tokens for a fixed time.

200 users are created through the admin API (in the ``physicists`` group, with an auth_state shaped
like a login's), and each gets an API token with exactly a server's scopes
(``users:activity!user``, ``custom:casa-tokens:renew!user``). Each simulated server is one client
thread with its own keep-alive connection that calls ``POST /hub/api/casa/tokens/xcache`` once every
``PERIOD`` seconds (a random phase each), whether or not earlier answers were slow (open loop), for
the phase's duration. The baseline is the same clients, on the same schedule, calling
``GET /hub/api/user`` (the cheapest authenticated call). Phases alternate broker, baseline,
baseline, broker after a short unmeasured warm-up of each.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from .casa_settings import GROUP, provider_auth_state
from .common import BenchmarkFailed, Context, Row, percentiles
from .hub_gc import full_gcs

TITLE = "broker_sustained"
ORDER = 35
NEEDS_FACILITY = True
SERVERS = 200
PERIOD = 2.0  # seconds between one server's calls: 200 servers -> 100 requests/s offered
SERVER_SCOPES = ["users:activity!user", "custom:casa-tokens:renew!user"]


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)  # how late each call started (client saturation)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    hub_cpu_s: float = 0.0
    full_gc_ms: list[float] = field(default_factory=list)  # the hub's generation-2 collections meanwhile


def _admin(ctx: Context, method: str, path: str, **kw: Any) -> requests.Response:
    fac = ctx.facility()
    return requests.request(method, f"{fac.hub_url}/hub/api{path}", timeout=120,
                            headers={"Authorization": f"token {ctx.admin_token}"}, **kw)


def _check(r: requests.Response, what: str, ok: tuple[int, ...] = (200, 201)) -> requests.Response:
    if r.status_code not in ok:
        raise RuntimeError(f"{what}: HTTP {r.status_code} {r.text[:200]}")
    return r


def server_tokens(ctx: Context, names: list[str]) -> dict[str, str]:
    """Create the users (admin API, in bulk), put them in the group, give them an auth_state, and
    return one server-scoped API token per user."""
    _check(_admin(ctx, "POST", "/users", json={"usernames": names}), "creating users", (201, 409))
    if _admin(ctx, "GET", f"/groups/{GROUP}").status_code == 404:
        _check(_admin(ctx, "POST", f"/groups/{GROUP}"), "creating the group")
    _check(_admin(ctx, "POST", f"/groups/{GROUP}/users", json={"users": names}), "adding users to the group")

    def prepare(name: str) -> str:
        _check(_admin(ctx, "PATCH", f"/users/{name}", json={"auth_state": provider_auth_state(name)}),
               f"setting {name}'s auth_state")
        r = _check(_admin(ctx, "POST", f"/users/{name}/tokens",
                          json={"scopes": [f"{s}={name}" for s in SERVER_SCOPES],
                                "note": "benchmark: a server's token"}), f"{name}'s token")
        return r.json()["token"]

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(names, pool.map(prepare, names), strict=True))


def load(url: str, method: str, tokens: list[str], seconds: float, period: float, hub: psutil.Process,
         hub_log: Path) -> Phase:
    """Every client calls ``method url`` once per ``period`` seconds for ``seconds`` seconds."""
    phase = Phase()
    lock = threading.Lock()
    start = time.perf_counter() + 0.2  # all threads are waiting before the first call
    end = start + seconds

    def client(token: str) -> None:
        session = requests.Session()
        headers = {"Authorization": f"token {token}"}
        due = start + random.uniform(0, period)
        lat, late, errors = [], [], []
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            try:
                r = session.request(method, url, headers=headers, timeout=60)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")
            except requests.RequestException as e:
                errors.append(type(e).__name__)
            lat.append((time.perf_counter() - t0) * 1000)
            late.append(max(0.0, (t0 - due) * 1000))
            due += period
        session.close()
        with lock:
            phase.latencies_ms += lat
            phase.late_ms += late
            phase.errors += errors

    cpu0 = hub.cpu_times()
    _, log_lines = full_gcs(hub_log)
    with ThreadPoolExecutor(len(tokens)) as pool:
        list(pool.map(client, tokens))
    phase.seconds = time.perf_counter() - start  # until the last answer: longer if the hub fell behind
    cpu1 = hub.cpu_times()
    phase.hub_cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    phase.full_gc_ms, _ = full_gcs(hub_log, log_lines)
    return phase


def _json_message(r: requests.Response) -> str:
    try:
        return str(r.json().get("message", ""))[:200]
    except ValueError:
        return ""


def _merge(phases: list[Phase]) -> Phase:
    return Phase([x for p in phases for x in p.latencies_ms], [x for p in phases for x in p.late_ms],
                 [x for p in phases for x in p.errors], sum(p.seconds for p in phases),
                 sum(p.hub_cpu_s for p in phases), [x for p in phases for x in p.full_gc_ms])


def run(ctx: Context) -> list[Row]:
    duration = 10.0 if ctx.options.quick else 30.0
    fac = ctx.facility()
    api = ctx.hub_api_url()
    hub = psutil.Process(fac.procs["hub"].pid)
    hub_log = fac.log_dir / "hub.log"
    names = [f"sb{i:04d}" for i in range(SERVERS)]
    tokens = list(server_tokens(ctx, names).values())
    calls = {"broker": (f"{api}/casa/tokens/xcache", "POST"), "user": (f"{api}/user", "GET")}
    with requests.Session() as s:  # what each endpoint returns, checked once
        headers = {"Authorization": f"token {tokens[0]}"}
        broker_answer = s.post(calls["broker"][0], headers=headers, timeout=30)
        user_answer = s.get(calls["user"][0], headers=headers, timeout=30)
        if broker_answer.status_code != 200 or "token" not in broker_answer.json() or user_answer.status_code != 200:
            raise RuntimeError(
                f"a server's token is not accepted: broker HTTP {broker_answer.status_code} "
                f"{_json_message(broker_answer)}, GET /user HTTP {user_answer.status_code}; hub log:\n"
                + fac.log_tail("hub", 30))
    for kind in calls:  # unmeasured: connections, first refresh of each user, caches
        load(*calls[kind], tokens, 3.0, PERIOD, hub, hub_log)
    phases: dict[str, list[Phase]] = {"broker": [], "user": []}
    for kind in ("broker", "user", "user", "broker"):
        phase = load(*calls[kind], tokens, duration / 2, PERIOD, hub, hub_log)
        ctx.log(f"  {kind}: {len(phase.latencies_ms) / phase.seconds:.1f}/s, "
                f"p50 {percentiles(phase.latencies_ms)['p50 ms']:.1f} ms, {len(phase.errors)} errors")
        phases[kind].append(phase)
    broker, user = _merge(phases["broker"]), _merge(phases["user"])
    label = "GET /hub/api/user, same clients and schedule"
    offered = SERVERS / PERIOD
    case = f"{SERVERS} servers, one call each per {PERIOD:g} s ({offered:.0f}/s offered), {duration:g} s"
    lat_b, lat_u = percentiles(broker.latencies_ms), percentiles(user.latencies_ms)
    rows = [Row(TITLE, f"{case} (n={len(broker.latencies_ms)})", "tokens/s", len(broker.latencies_ms) / broker.seconds,
                label, len(user.latencies_ms) / user.seconds)]
    rows += [Row(TITLE, "POST /hub/api/casa/tokens/xcache latency", m, lat_b[m], label, lat_u[m])
             for m in ("p50 ms", "p95 ms", "p99 ms")]
    rows.append(Row(TITLE, "hub CPU time per call", "ms", broker.hub_cpu_s * 1000 / len(broker.latencies_ms), label,
                    user.hub_cpu_s * 1000 / len(user.latencies_ms)))
    rows.append(Row(TITLE, "hub's full garbage collections (event loop stopped)", "count",
                    float(len(broker.full_gc_ms)), label, float(len(user.full_gc_ms))))
    if broker.full_gc_ms or user.full_gc_ms:
        rows.append(Row(TITLE, "longest of them", "ms", max(broker.full_gc_ms, default=0.0), label,
                        max(user.full_gc_ms, default=0.0)))
    rows.append(Row(TITLE, "calls started late by the client (> 100 ms)", "share %",
                    100 * sum(x > 100 for x in broker.late_ms) / len(broker.late_ms), label,
                    100 * sum(x > 100 for x in user.late_ms) / len(user.late_ms)))
    rows.append(Row(TITLE, "failed calls", "errors", float(len(broker.errors)), label, float(len(user.errors))))
    ctx.notes.append(
        f"broker_sustained: {SERVERS} users created with one admin API call, added to `{GROUP}`, given an "
        "auth_state shaped like a login's (random provider tokens) with `PATCH /hub/api/users/<name>`, and "
        "one API token each with exactly a server's scopes. Each simulated server is a client thread with "
        f"its own keep-alive connection to the hub's API URL, calling once every {PERIOD:g} s from a random "
        "phase (open loop: a slow answer does not delay the next call's schedule); latency is from sending "
        "to the full answer, measured by the client on the same machine. Broker: `POST "
        "/hub/api/casa/tokens/xcache` (scope and rate-limit checks, mint, auth_state decrypted, updated, "
        "encrypted and saved). Baseline: `GET /hub/api/user` with the same tokens and schedule. Phases "
        f"of {duration / 2:g} s alternate broker, baseline, baseline, broker after 3 s of each unmeasured; "
        "tokens/s = answered calls / time from the first call to the last answer (below the offered rate "
        "when the hub falls behind). Hub CPU = the hub process's user + system time during the "
        "phases / calls. Full garbage collections: the hub logs each generation-2 collection with its "
        "duration (`benchmarks/hub_gc.py`, `gc.callbacks`); each stops the hub's event loop, and one in a "
        "phase sets that phase's p99. The facility's per-user rate limit is lifted for the benchmarks (it would allow "
        "30 calls a minute: one per 2 s)."
    )
    errors = broker.errors + user.errors
    if errors:
        raise BenchmarkFailed(f"{len(errors)} calls failed: {sorted(set(errors))}", rows)
    return rows
