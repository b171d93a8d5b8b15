"""Login storm: N users sign in through the real OIDC provider and start servers, C at a time.

Two hubs run side by side, each with its own provider knowing the same generated users, and both
with a spawner that starts no process (``fast_spawner``), so the hubs' own work is what is timed:

- casa_hub: ``CasaOIDCAuthenticator`` (discovery, PKCE, nonce, ID token verification, facility tokens
  minted at login) and ``CasaFastSpawner`` (tokens for four grants, XCache/ServiceX/HTCondor/MLflow
  contributions, files written 0600);
- baseline: oauthenticator's ``GenericOAuthenticator`` with explicit endpoints and ``FastSpawner``.

A storm is N users at once through a pool of C client threads (``storm.sign_in_and_start``). The
hubs take turns: baseline, casa (``--quick``), or baseline, casa, casa, baseline with new users in
each round and the previous round's servers stopped first, so each hub has one round with an empty
database and one with the earlier round's users in it. Each hub gets two unmeasured logins first.
Any failed sign-in or start fails the benchmark (after its figures are printed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from . import storm
from .common import BenchmarkFailed, Context, Row, percentiles
from .hub_gc import full_gcs

TITLE = "login_storm"
ORDER = 50
NEEDS_FACILITY = True  # its own two
BASELINE = "plain"
CONCURRENCY = 20
WARM_UP = 2


def settings(ctx: Context) -> tuple[int, int]:
    """(users per storm, rounds per hub)."""
    return (40, 1) if ctx.options.quick else (200, 2)


def check_casa_files(fac: Any, names: list[str]) -> list[str]:
    """The casa hub's spawner wrote four token files (0600) for each user of the round."""
    problems = []
    for name in names:
        tokens = fac.state_dir / "homes" / name / ".casa" / "tokens"
        files = sorted(tokens.glob("*.token")) if tokens.is_dir() else []
        if len(files) != 4 or any(f.stat().st_mode & 0o077 for f in files):
            problems.append(f"{name}: token files {[f.name for f in files]} missing or not private")
    return problems


def run(ctx: Context) -> list[Row]:
    n, rounds = settings(ctx)
    order = ["plain", "casa"] if rounds == 1 else ["plain", "casa", "casa", "plain"]
    batches = [storm.make_users("ls", n, start=i * n) for i in range(rounds)]
    warm = storm.make_users("warm", WARM_UP, start=0)
    users = [u for b in batches for u in b] + warm
    results: dict[str, list[storm.StormResult]] = {"plain": [], "casa": []}
    hub_means: dict[str, dict[str, float | None]] = {}
    gc_ms: dict[str, list[float]] = {"plain": [], "casa": []}
    with tempfile.TemporaryDirectory(prefix="casa-bench-storm-") as tmp:
        with storm.bench_hub(ctx, "plain", users, Path(tmp) / "plain") as plain, \
                storm.bench_hub(ctx, "casa", users, Path(tmp) / "casa") as casa:
            facs = {"plain": plain, "casa": casa}
            for variant, fac in facs.items():
                warmed = storm.storm(fac.hub_url, warm, WARM_UP)
                if warmed.errors:
                    raise RuntimeError(f"warm-up logins to the {variant} hub failed: {warmed.errors}")
                storm.stop_servers(fac, ctx.admin_token, [u["username"] for u in warm])
            done = {"plain": 0, "casa": 0}
            for variant in order:
                fac, batch = facs[variant], batches[done[variant]]
                names = [u["username"] for u in batch]
                if done[variant]:  # the previous round's servers stop; its users stay in the database
                    storm.stop_servers(fac, ctx.admin_token, [u["username"] for u in batches[done[variant] - 1]])
                _, log_lines = full_gcs(fac.log_dir / "hub.log")
                result = storm.storm(fac.hub_url, batch, CONCURRENCY, storm.processes(fac))
                gc_ms[variant] += full_gcs(fac.log_dir / "hub.log", log_lines)[0]
                missing = set(names) - storm.ready_servers(fac, ctx.admin_token)
                result.errors += [f"{name}: the hub does not list the server as ready" for name in sorted(missing)]
                if variant == "casa":
                    result.errors += check_casa_files(fac, names)
                ctx.log(f"  {variant} round {done[variant] + 1}: {len(result.samples)} ready in {result.wall_s:.1f} s "
                        f"({result.throughput:.1f}/s), {len(result.errors)} errors")
                results[variant].append(result)
                done[variant] += 1
            for variant, fac in facs.items():
                hub_means[variant] = {
                    "spawn": storm.hub_metric_mean(fac, ctx.admin_token, "jupyterhub_server_spawn_duration_seconds",
                                                   'status="success"'),
                    "prepare": storm.hub_metric_mean(fac, ctx.admin_token, "casa_hub_spawn_prepare_duration_seconds",
                                                     'outcome="ok"'),
                }
    rows = rows_for(ctx, n, rounds, {v: storm.pooled(r) for v, r in results.items()}, hub_means, gc_ms)
    errors = [e for r in results.values() for res in r for e in res.errors]
    if errors:
        raise BenchmarkFailed(f"{len(errors)} sign-ins or server starts failed, e.g. {errors[:5]}", rows)
    return rows


def rows_for(ctx: Context, n: int, rounds: int, pooled: dict[str, storm.StormResult],
             hub_means: dict[str, dict[str, float | None]], gc_ms: dict[str, list[float]]) -> list[Row]:
    casa, plain = pooled["casa"], pooled["plain"]
    label = storm.LABELS[BASELINE]
    rows = [Row(TITLE, f"{n} users × {rounds} round(s), {CONCURRENCY} clients (n={len(casa.samples)})", "logins/s",
                casa.throughput, label, plain.throughput)]
    if len(casa.samples) > 1 and len(plain.samples) > 1:
        ready = {v: percentiles([s.ready_s * 1000 for s in r.samples]) for v, r in pooled.items()}
        rows += [Row(TITLE, "login → server ready", m, ready["casa"][m], label, ready["plain"][m])
                 for m in ("p50 ms", "p95 ms", "p99 ms")]
        rows.append(Row(TITLE, "sign-in part (provider, callback, home page)", "p50 ms",
                        storm.median([s.login_s * 1000 for s in casa.samples]), label,
                        storm.median([s.login_s * 1000 for s in plain.samples])))
    spawn = hub_means["casa"]["spawn"], hub_means["plain"]["spawn"]
    if None not in spawn:
        rows.append(Row(TITLE, "spawn inside the hub (JupyterHub's spawn duration metric)", "mean ms",
                        spawn[0] * 1000, label, spawn[1] * 1000))
    if hub_means["casa"]["prepare"] is not None:
        rows.append(Row(TITLE, "casa_prepare within it (casa_hub_spawn_prepare_duration_seconds)", "mean ms",
                        hub_means["casa"]["prepare"] * 1000))
    for proc in ("hub", "provider", "proxy", "client"):
        if casa.samples and plain.samples and proc in casa.cpu_s and proc in plain.cpu_s:
            rows.append(Row(TITLE, f"CPU time of the {proc} process per login + server start", "ms",
                            casa.cpu_s[proc] * 1000 / len(casa.samples), label,
                            plain.cpu_s[proc] * 1000 / len(plain.samples)))
    rows.append(Row(TITLE, "hub's full garbage collections during the storms", "count", float(len(gc_ms["casa"])),
                    label, float(len(gc_ms["plain"]))))
    if gc_ms["casa"] or gc_ms["plain"]:
        rows.append(Row(TITLE, "longest of them (the hub's event loop stopped)", "ms", max(gc_ms["casa"], default=0.0),
                        label, max(gc_ms["plain"], default=0.0)))
    rows.append(Row(TITLE, "failed sign-ins or server starts", "errors", float(len(casa.errors)), label,
                    float(len(plain.errors))))
    ctx.notes.append(
        f"login_storm: two hubs side by side ({storm.LABELS['casa']} vs {label}), each with its own demo "
        f"provider (npm oidc-provider, in-memory storage) holding the same generated users, and a spawner that "
        f"starts no process (the hub's in-process always-up listener answers its readiness check and the "
        f"proxied request). Per user, from a `requests` client thread: the hub's `/hub/oauth_login`, the "
        f"provider's form, redirects back to `/hub/oauth_callback` and `/hub/home`, `POST /hub/api/users/<name>/"
        f"server` until the hub reports it ready (201, or 202 and polling the user's model), then one request "
        f"through the proxy. Storms of {n} users through {CONCURRENCY} threads; hubs take turns ("
        f"{'baseline, casa' if rounds == 1 else 'baseline, casa, casa, baseline; new users each round, the earlier round stopped first'}"
        "); 2 unmeasured logins per hub first. logins/s = ready servers / storm wall time; percentiles over "
        "all users of the hub's rounds. The casa spawner's files are checked after each round (4 token "
        "files, 0600). Hub-side means come from the hubs' Prometheus metrics after the storms (warm-up "
        "included). CPU time per login: user + system seconds of each process (hub, its proxy, the "
        "hub's provider, the benchmark's own client threads) during the hub's storms / ready servers: "
        "less sensitive to other work on the machine than the latencies. Full garbage collections: "
        "generation-2 collections the hub logged during the storms (`benchmarks/hub_gc.py`). Client, providers, proxies and "
        "hubs share the machine's cores."
    )
    return rows
