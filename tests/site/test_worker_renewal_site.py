"""Worker credential renewal against the real servers: Dask workers keep reading through the real XCache
for three lifetimes of their storage token, through an outage of the hub, on Dask Gateway's local backend
and on real Slurm.

- The hub's grant ``xcache-short`` (the cache's audience, ``storage.read:/user/<name>``) lives 40 s.
- The notebook's renewal agent (``CasaTokenRenewal``, the code the notebook's Jupyter server runs) keeps
  ``<token dir>/xcache-short.token`` fresh through the real broker, reached through a relay the test cuts.
- The "notebook" (tests/support/worker_renewal_driver.py, in the servers' network namespace) attaches with
  ``casa_hub.dask.get_client``, which pushes each renewed token to the cluster's workers over Dask; each
  worker reads alice's file through the cache every 2 s with the token in its ``BEARER_TOKEN_FILE``.
- Slurm: ``FacilitySlurmBackend`` with ``token_renewal = True`` (walltime 10 min > 40 s tokens), jobs as
  the Unix user alice, the first token minted by the gateway. Local: ``FacilityLocalBackend``, whose
  workers get their first token from the push.

What must hold: every read succeeds while the token it used is valid, for more than three lifetimes; with
the hub away the workers keep the last token and read with it until it expires, then reads fail (the cache
refuses an expired token); once the hub is back, the next renewal reaches every worker and reads resume; no
worker holds any hub credential in its environment or files; token values appear in no log.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
from dask_gateways import HUB_API_IN_NETNS, gateway_config, running_gateway
from helpers import admin_api, http_login
from xrootd_fixture import (
    CACHE_AUDIENCE,
    SHORT_USER_GRANT,
    SHORT_USER_LIFETIME,
    HubRelay,
    Token,
    broker_token,
)

from casa_hub.common.files import token_file_name, write_private
from casa_hub.tokens.renewal.agent import CasaTokenRenewal

pytestmark = [pytest.mark.e2e, pytest.mark.run_apart]  # each backend may run in its own worker

DRIVER = Path(__file__).resolve().parents[1] / "support" / "worker_renewal_driver.py"
ALICE_FILE = "/store/user/alice/events.txt"
LIFETIME = SHORT_USER_LIFETIME
PERIOD = 2.0  # seconds between reads
PORTS = {"local": {"api_port": 18010, "proxy_port": 18011}, "slurm": {"api_port": 18020, "proxy_port": 18021}}


@pytest.fixture(scope="module")
def notebook_token(xrootd_facility, admin_token) -> Token:
    """Like the notebook's JUPYTERHUB_API_TOKEN: it may renew alice's own facility tokens (and the gateway
    learns her name and groups from the hub with it)."""
    fac = xrootd_facility
    _, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    r = admin_api(fac.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user=alice"], "note": "worker renewal test",
                        "expires_in": 3600})
    assert r.status_code == 201, r.text
    return Token(r.json()["token"])


class AgentThread:
    """The notebook's renewal agent, run in a thread against ``api_url``; ``stop()`` ends it."""

    def __init__(self, token_dir: Path, api_url: str, api_token: str) -> None:
        self.agent = CasaTokenRenewal(token_dir=str(token_dir), api_url=api_url, api_token=api_token,
                                      retry_initial=1.0, retry_max=3.0, rescan_interval=2.0)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.agent.run())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(15)


def claims_of(path: Path) -> dict:
    return jwt.decode(path.read_text().strip(), options={"verify_signature": False})


def wait_new_jti(path: Path, than: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (c := claims_of(path))["jti"] == than:
        assert time.monotonic() < deadline, f"no new token in {path.name} within {timeout:.0f} s"
        time.sleep(0.2)
    return c


def progress_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait_record(path: Path, predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in progress_records(path) if predicate(r)]
        if found:
            return found[0]
        assert proc.poll() is None, f"the driver exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-2000:]}"
        time.sleep(0.5)


@pytest.mark.timeout(600)  # three 40 s lifetimes, an outage and the start of the cluster
@pytest.mark.slow(185)  # three 40 s lifetimes and an outage
@pytest.mark.parametrize("backend", ["local", pytest.param("slurm", marks=pytest.mark.shares("job_user"))])
def test_workers_keep_reading_for_three_lifetimes_and_through_an_outage(
        backend, request, xrootd_facility, xrootd_site, slurm_site, notebook_token, tmp_path):
    fac = xrootd_facility
    user = request.getfixturevalue("job_user") if backend == "slurm" else None
    token_dir = tmp_path / "tokens"
    token_dir.mkdir(mode=0o700)
    token_file = token_dir / token_file_name(SHORT_USER_GRANT)
    write_private(token_file, broker_token(fac, "alice", SHORT_USER_GRANT))  # as the spawner writes it
    assert claims_of(token_file)["exp"] - claims_of(token_file)["iat"] == LIFETIME

    relay = HubRelay(fac.hub_port)
    agent = AgentThread(token_dir, relay.api_url, notebook_token)
    gw_dir = tmp_path / "gateway"
    gw_dir.mkdir()
    cfg = gateway_config(gw_dir, PORTS[backend], backend=backend, slurm_site=slurm_site, facility=fac,
                         grant=SHORT_USER_GRANT, lifetime=LIFETIME, token_renewal=True)
    progress, stop_file, driver_log = tmp_path / "progress.jsonl", tmp_path / "stop", tmp_path / "driver.log"
    args = {"gateway_url": f"http://127.0.0.1:{PORTS[backend]['proxy_port']}", "xrdcp": shutil.which("xrdcp"),
            "url": f"root://localhost:1095/{ALICE_FILE}", "ca_dir": str(xrootd_site.ca_dir),
            "progress": str(progress), "stop_file": str(stop_file), "period": PERIOD}
    (tmp_path / "args.json").write_text(json.dumps(args))
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(tmp_path), "LANG": "C.UTF-8", "JUPYTERHUB_API_URL": HUB_API_IN_NETNS,
           "JUPYTERHUB_API_TOKEN": notebook_token, "JUPYTERHUB_USER": "alice", "CASA_TOKEN_DIR": str(token_dir),
           "CASA_WORKER_STORAGE_GRANT": SHORT_USER_GRANT}
    try:
        with running_gateway(slurm_site, xrootd_site, cfg, PORTS[backend]["proxy_port"]) as (_, gw_log), \
                open(driver_log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", slurm_site.netns, sys.executable, str(DRIVER),
                                     str(tmp_path / "args.json")], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=tmp_path, start_new_session=True)
            try:
                ready = wait_record(progress, lambda r: r["event"] == "ready", 300, "2 workers", proc, driver_log)
                t0 = ready["t"]
                # 1. three lifetimes with the hub there
                time.sleep(max(0.0, t0 + 3 * LIFETIME - time.time()))
                # 2. the hub goes away right after a renewal, for more than that token's remaining lifetime
                kept = wait_new_jti(token_file, claims_of(token_file)["jti"], LIFETIME)
                wait_record(progress, lambda r: r.get("jti") == kept["jti"], 20, "the last token before the outage",
                            proc, driver_log)
                relay.stop()
                t_cut = time.time()
                time.sleep(max(0.0, kept["exp"] + 3 * PERIOD + 1 - time.time()))
                assert claims_of(token_file)["jti"] == kept["jti"], "renewed while the hub was away?"
                relay.start()
                t_back = time.time()
                back = wait_new_jti(token_file, kept["jti"], 30)
                for w in {r["worker"] for r in progress_records(progress) if r["event"] == "read"}:
                    wait_record(progress, lambda r, w=w: r.get("worker") == w and r.get("jti") == back["jti"]
                                and r["rc"] == 0, 30, f"{w} to read with the token renewed after the outage",
                                proc, driver_log)
                stop_file.touch()
                proc.wait(120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            output = driver_log.read_text(errors="replace")
            gateway_log = gw_log.read_text(errors="replace")
    finally:
        agent.stop()
        relay.stop()

    assert proc.returncode == 0, output[-3000:]
    report = json.loads(next(line for line in output.splitlines() if line.startswith("REPORT "))[len("REPORT "):])
    reads = [r for r in progress_records(progress) if r["event"] == "read"]
    workers = sorted({r["worker"] for r in reads})
    assert len(workers) == 2, workers

    # 1. before the outage: every read succeeded with a valid token, and each worker went through at least
    #    three tokens in three lifetimes (the first one included)
    before = [r for r in reads if r["t"] < t_cut]
    assert before[-1]["t"] - before[0]["t"] >= 3 * LIFETIME
    failed = [(r["worker"], round(r["t"] - t0), r["stderr"]) for r in before if r["rc"] != 0]
    assert failed == [], f"reads failed while the hub was there: {failed}"
    assert all(r["exp"] and r["exp"] > r["t"] for r in before), "a worker held an expired token"
    for w in workers:
        jtis = {r["jti"] for r in before if r["worker"] == w}
        assert len(jtis) >= 4, f"{w} held {len(jtis)} tokens in {3 * LIFETIME} s of {LIFETIME} s tokens"

    # 2. the outage: the workers keep the last token; reads go on while it is valid, and fail once it expired
    during = [r for r in reads if t_cut <= r["t"] < t_back]
    assert {r["jti"] for r in during} == {kept["jti"]}, "a token reached the workers while the hub was away"
    valid = [r for r in during if r["t"] < kept["exp"] - 1]
    expired = [r for r in during if r["t"] > kept["exp"] + 1]
    assert valid and all(r["rc"] == 0 for r in valid), [(r["rc"], r["stderr"]) for r in valid]
    assert {r["worker"] for r in expired} == set(workers), "every worker read after the token expired"
    assert all(r["rc"] != 0 for r in expired), "the cache accepted an expired token"
    print(f"{backend}: {len(before)} reads over {before[-1]['t'] - t0:.0f} s, then {len(valid)} on the kept token, "
          f"{len(expired)} refused after it expired ({expired[0]['stderr'].strip()[-120:]!r})")

    # 3. after the hub came back: reads resume on the renewed token, on every worker
    after = [r for r in reads if r["jti"] == back["jti"]]
    assert {r["worker"] for r in after if r["rc"] == 0} == set(workers)

    # the workers: alice's storage token, pushed (the record) or first given by the gateway; no hub credential
    hub_secret = str(notebook_token)
    for address, w in report["workers"].items():
        assert w["claims"]["sub"] == "alice" and w["claims"]["aud"] == CACHE_AUDIENCE, w["claims"]
        assert w["claims"]["scope"] == "storage.read:/user/alice"
        assert w["record"] and w["record"]["outcome"] in ("replaced", "kept"), w["record"]
        assert [k for k in w["environ"] if k.startswith(("JUPYTERHUB_", "JPY_"))] == [], address
        assert not any(hub_secret in v for v in w["environ"].values()), f"{address}: hub token in its environment"
        holding = [f for f in w["files"] if Path(f).is_file() and hub_secret.encode() in Path(f).read_bytes()]
        assert holding == [], f"{address} holds the hub token in {holding}"
        if backend == "slurm":
            assert w["slurm_job_id"] and w["uid"] == user.pw_uid, (w["slurm_job_id"], w["uid"])
            assert w["token_file"].startswith(f"{user.pw_dir}/.dask-gateway/"), w["token_file"]
        else:
            assert "casa-tokens" in w["token_file"], w["token_file"]
    assert slurm_site.wait_for_no_jobs(60) == [], "Slurm jobs left after the cluster's shutdown"
    for text in (output, gateway_log, (fac.log_dir / "hub.log").read_text(errors="replace")):
        assert hub_secret not in text
        assert kept["jti"] and Path(token_file).read_text().strip() not in text
