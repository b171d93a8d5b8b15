"""The renewal agent against the real hub and broker: inside alice's running notebook server, as a
separate agent, and as ``casa-hub renew-tokens``.

The facility here has a 45 s xcache grant (renewed after 30 s) and the in-server agent looks for new
token files every 2 s, so renewals happen while the tests watch. It is the Dask facility, shared with
test_dask_gateway_e2e.py and test_pages_api.py (``shared_dask_facility``, tests/support/shared_facilities.py):
their servers are stopped when they end, and alice's server of this module when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import psutil
import pytest
import requests
from facilities import stop_servers
from helpers import (
    admin_api,
    http_login,
    login_and_start_server,
    read_server_environ,
    verify_with_published_jwks,
)
from shared_facilities import RENEWAL_LIFETIME as LIFETIME

from casa_hub.common.ports import free_port
from casa_hub.tokens.renewal.agent import CasaTokenRenewal
from casa_hub.tokens.renewal.files import write_token_file

pytestmark = pytest.mark.e2e

EXTENSION_ARG = "--ServerApp.jpserver_extensions=casa_hub.tokens.renewal.server_extension=True"


@pytest.fixture(scope="module")
def short_facility(shared_dask_facility):
    """The 45 s xcache grant and the 2 s rescan: shared_facilities.RENEWAL_CONFIG."""
    return shared_dask_facility


@pytest.fixture(scope="module")
def alice(short_facility, admin_token):
    """alice's running server, started here: its pid and environment (token dir, hub credential, API URL)."""
    stop_servers(short_facility, admin_token, "alice")  # a fresh server: its first token is fresh
    model = login_and_start_server(short_facility.hub_url, admin_token, "alice", short_facility.password("alice"))
    pid = model["servers"][""]["state"]["pid"]
    env = read_server_environ(pid)
    token_dir = Path(env["CASA_TOKEN_DIR"])
    first = (token_dir / "xcache.token").read_text()
    yield {"pid": pid, "env": env, "token_dir": token_dir, "first_xcache": first}
    stop_servers(short_facility, admin_token, "alice")


def fake_token(grant: str, exp_in: float = 60) -> str:
    """A token file for a grant the hub will refuse; due for renewal at once."""
    now = int(time.time())
    return jwt.encode({"iat": now - 600, "exp": int(now + exp_in), "jti": f"fake-{grant}"}, "k" * 32,
                      algorithm="HS256")


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def is_complete_token(content: str, sub: str) -> bool:
    try:
        return claims(content)["sub"] == sub
    except (jwt.PyJWTError, KeyError):
        return False


def wait_until(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting {timeout:.0f} s for {what}")


class Reader(threading.Thread):
    """Reads a token file over and over, recording every content it sees."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.reads, self.stop = path, [], 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            content = self.path.read_text()
            if not self.seen or self.seen[-1] != content:
                self.seen.append(content)
            self.reads += 1
            time.sleep(0.0005)


@pytest.mark.slow(25)
def test_agent_in_notebook_server_replaces_token_before_expiry(short_facility, alice):
    assert EXTENSION_ARG in psutil.Process(alice["pid"]).cmdline(), "the spawner enables the agent"
    path = alice["token_dir"] / "xcache.token"
    old = alice["first_xcache"]
    old_claims = verify_with_published_jwks(old, short_facility.issuer_url, "casa-demo-xcache")
    held_open = open(path)  # noqa: SIM115 - an in-place rewrite would show through this handle
    # grants the hub refuses (403: alice is not a facility admin; 404: no such grant), checked below
    for grant in ("operations", "no-such-grant"):
        write_token_file(alice["token_dir"] / f"{grant}.token", fake_token(grant))
    reader = Reader(path)
    reader.start()
    try:
        new = wait_until(lambda: (c := path.read_text()) != old and c, LIFETIME + 15,
                         "the agent in alice's server to replace xcache.token")
    finally:
        reader.stop.set()
        reader.join()
    new_claims = verify_with_published_jwks(new, short_facility.issuer_url, "casa-demo-xcache")
    assert new_claims["jti"] != old_claims["jti"] and new_claims["exp"] > old_claims["exp"]
    assert new_claims["sub"] == "alice" and new_claims["scope"] == "storage.read:/user/alice"
    assert new_claims["iat"] < old_claims["exp"], "renewed before the old token expired"
    assert new_claims["iat"] >= old_claims["iat"] + 2 * LIFETIME // 3 - 1, "renewed too early: before 2/3 of the old token's lifetime"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(alice["token_dir"].stat().st_mode) == 0o700
    with held_open:
        assert held_open.read() == old, "replaced by rename, not rewritten in place"
    assert reader.reads > 0 and reader.seen[0] == old
    partial = [c for c in reader.seen if not is_complete_token(c, "alice")]
    assert not partial, f"a reader saw {len(partial)} incomplete token file(s)"
    log = (short_facility.log_dir / "hub.log").read_text()
    assert f"renewed 'xcache' in {path} (jti={new_claims['jti']}" in log
    for token in (old, new):
        assert token not in log
    assert alice["env"]["JUPYTERHUB_API_TOKEN"] not in log


def test_agent_in_notebook_server_stops_renewing_refused_grants(short_facility, alice):
    expected = {"operations": "HTTP 403", "no-such-grant": "HTTP 404"}
    if not (alice["token_dir"] / "operations.token").exists():  # run on its own
        for grant in expected:
            write_token_file(alice["token_dir"] / f"{grant}.token", fake_token(grant))
    before = {g: (alice["token_dir"] / f"{g}.token").read_bytes() for g in expected}
    log_path = short_facility.log_dir / "hub.log"
    for grant, status in expected.items():
        line = f"the hub refused to renew grant '{grant}' ({status}"
        wait_until(lambda line=line: line in log_path.read_text(), 30, f"the agent to log {line!r}")
    # let the agent look at the directory a few more times (every 2 s): they are never retried
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        time.sleep(0.5)
    log = log_path.read_text()
    for grant in expected:
        assert log.count(f"the hub refused to renew grant '{grant}'") == 1, f"{grant} was retried"
        assert f"could not renew '{grant}'" not in log
        assert (alice["token_dir"] / f"{grant}.token").read_bytes() == before[grant]
    assert "You may not receive 'operations' tokens" in log and "No grant named 'no-such-grant'" in log


class RecordingTime:
    """Records every sleep the agent asks for. With ``start``, an injected clock that stands still
    except for those sleeps (which return at once); without, real time and real sleeps."""

    def __init__(self, start: float | None = None) -> None:
        self.t, self.sleeps = start, []

    def clock(self) -> float:
        return time.time() if self.t is None else self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.t is None:
            await asyncio.sleep(seconds)
        else:
            self.t += seconds
            await asyncio.sleep(0)


def private_copy(tmp_path: Path, grant: str, token: str) -> Path:
    d = tmp_path / "tokens"
    d.mkdir(mode=0o700, exist_ok=True)
    write_token_file(d / f"{grant}.token", token)
    return d


async def test_unreachable_broker_keeps_the_file_and_backs_off(tmp_path, short_facility, alice):
    token = (alice["token_dir"] / "xcache.token").read_text()  # a real token from the hub
    token_dir = private_copy(tmp_path, "xcache", token)
    before = (token_dir / "xcache.token").read_bytes()
    rt = RecordingTime(start=claims(token)["iat"])  # as if at the token's issue time: 45 s left
    jitters = iter([0.0, 0.5, 0.999, 0.25, 0.0, 0.0])
    agent = CasaTokenRenewal(
        token_dir=str(token_dir), api_url=f"http://127.0.0.1:{free_port()}/hub/api",
        api_token=alice["env"]["JUPYTERHUB_API_TOKEN"], clock=rt.clock, sleep=rt.sleep,
        rand=lambda: next(jitters), retry_initial=1, retry_max=8, retry_jitter=0.5,
    )
    assert await agent.run_once(force=True, attempts=6) == {"xcache": "failed"}
    st = agent.states["xcache"]
    assert (token_dir / "xcache.token").read_bytes() == before, "the old token is kept byte for byte"
    assert st.attempts == 6 and "cannot reach the hub" in st.last_error
    # bases 1, 2, 4, 8, 8 (capped), each shortened by jitter * rand: exactly the recorded delays
    assert st.retry_delays == pytest.approx([1.0, 1.5, 2.002, 7.0, 8.0, 8.0])
    assert rt.sleeps == st.retry_delays[:5]
    assert sum(rt.sleeps) < LIFETIME, "no sleep went past the token's expiry"

    # 3 s before expiry: the backoff is cut at the expiry, then doubles again once it has passed
    late = CasaTokenRenewal(
        token_dir=str(token_dir), api_url=agent.api_url, api_token="unused", clock=rt.clock, sleep=rt.sleep,
        retry_initial=2, retry_max=8, retry_jitter=0,
    )
    rt.t = claims(token)["exp"] - 3
    assert await late.run_once(force=True, attempts=4) == {"xcache": "failed"}
    assert late.states["xcache"].retry_delays == [2, 1, 8, 8]
    assert (token_dir / "xcache.token").read_bytes() == before


async def test_refused_grants_are_not_retried(tmp_path, short_facility, alice, caplog):
    token_dir = private_copy(tmp_path, "operations", fake_token("operations"))
    write_token_file(token_dir / "no-such-grant.token", fake_token("no-such-grant"))
    before = {p.name: p.read_bytes() for p in token_dir.iterdir()}
    rt = RecordingTime(start=time.time())
    agent = CasaTokenRenewal(
        token_dir=str(token_dir), api_url=alice["env"]["JUPYTERHUB_API_URL"],
        api_token=alice["env"]["JUPYTERHUB_API_TOKEN"], clock=rt.clock, sleep=rt.sleep,
        rescan_interval=30, log=logging.getLogger("test-renewal"),
    )
    with caplog.at_level(logging.INFO, "test-renewal"):
        task = asyncio.create_task(agent.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            {s.status for s in agent.states.values()} == {"stopped"} and len(agent.states) == 2
            and rt.sleeps.count(30) >= 20  # twenty more looks at the directory, an hour of agent time
        ):
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rt.sleeps.count(30) >= 20
    for grant, status in (("operations", 403), ("no-such-grant", 404)):
        st = agent.states[grant]
        assert (st.status, st.attempts, st.retry_delays) == ("stopped", 1, []), st
        assert f"HTTP {status}" in st.last_error
        assert f"the hub refused to renew grant '{grant}' (HTTP {status}" in caplog.text
    assert {p.name: p.read_bytes() for p in token_dir.iterdir()} == before


async def test_rate_limited_renewal_waits_for_retry_after(tmp_path, short_facility, admin_token):
    hub = short_facility.hub_url
    s, r = http_login(hub, "bob", short_facility.password("bob"))
    assert r.status_code == 200
    r = admin_api(hub, admin_token, "/users/bob/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user=bob"], "note": "renewal rate-limit test"})
    assert r.status_code == 201, r.text
    bob = r.json()["token"]

    def call():
        return requests.post(f"{hub}/hub/api/casa/tokens/xcache", headers={"Authorization": f"token {bob}"},
                             timeout=30)

    token_dir = private_copy(tmp_path, "xcache", call().json()["token"])
    codes = [call().status_code for _ in range(15)]
    assert 429 in codes, f"the broker's rate limit did not kick in: {codes}"
    rt = RecordingTime()
    agent = CasaTokenRenewal(token_dir=str(token_dir), api_url=f"{hub}/hub/api", api_token=bob,
                             sleep=rt.sleep, retry_initial=0.1, retry_jitter=0)
    assert await agent.run_once(force=True, attempts=4) == {"xcache": "renewed"}
    st = agent.states["xcache"]
    assert st.retry_afters and st.retry_afters[0] is not None and st.retry_afters[0] >= 1
    assert st.retry_delays[0] == st.retry_afters[0], "waited what Retry-After asked, not the 0.1 s backoff"
    assert claims((token_dir / "xcache.token").read_text())["sub"] == "bob"


def run_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CASA_"))}
    return subprocess.run([sys.executable, "-m", "casa_hub.cli", "renew-tokens", *args],
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_command_once_renews_with_the_servers_credential(tmp_path, short_facility, alice):
    token = (alice["token_dir"] / "xcache.token").read_text()
    token_dir = private_copy(tmp_path, "xcache", token)
    path = token_dir / "xcache.token"
    env = {"CASA_TOKEN_DIR": str(token_dir), "JUPYTERHUB_API_URL": alice["env"]["JUPYTERHUB_API_URL"],
           "JUPYTERHUB_API_TOKEN": alice["env"]["JUPYTERHUB_API_TOKEN"]}
    r = run_command("--once", "--fraction", "0.99", env=env)
    assert (r.returncode, r.stdout) == (0, "xcache: not due\n"), r.stderr
    assert path.read_text() == token
    r = run_command("--once", "--force", env=env)
    assert (r.returncode, r.stdout) == (0, "xcache: renewed\n"), r.stderr
    new = path.read_text()
    new_claims = verify_with_published_jwks(new, short_facility.issuer_url, "casa-demo-xcache")
    assert new_claims["jti"] != claims(token)["jti"] and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"jti={new_claims['jti']}" in r.stderr
    for secret in (token, new, env["JUPYTERHUB_API_TOKEN"]):
        assert secret not in r.stdout + r.stderr
