"""The renewal agent without a hub: scheduling arithmetic with an injected clock, atomic files,
how broker answers are handled, the server extension and spawner glue, the command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest
from jupyterhub.objects import Hub
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler
from traitlets import TraitError
from traitlets.config import LoggingConfigurable

from casa_hub.common.ports import free_port
from casa_hub.spawner import CasaLocalProcessSpawner
from casa_hub.tokens.renewal import server_extension as renewal_ext
from casa_hub.tokens.renewal.agent import CasaTokenRenewal, renewal_time, retry_delay
from casa_hub.tokens.renewal.broker_client import parse_retry_after
from casa_hub.tokens.renewal.files import grant_files, read_token_times, write_token_file

T0 = 1_700_000_000.0


def make_token(iat: float, exp: float, jti: str = "j1") -> str:
    return jwt.encode({"iat": int(iat), "exp": int(exp), "jti": jti, "sub": "alice"}, "k" * 32, algorithm="HS256")


class FakeTime:
    """An injected clock whose sleeps return at once and move the clock on."""

    def __init__(self, t: float, max_sleeps: int = 1000) -> None:
        self.t, self.sleeps, self.max_sleeps = t, [], max_sleeps

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) >= self.max_sleeps:
            raise Enough
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class Enough(Exception):
    pass


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tokens"
    d.mkdir(mode=0o700)
    return d


def agent_for(token_dir: Path, ft: FakeTime, api_url: str | None = None, **kw) -> CasaTokenRenewal:
    kw.setdefault("retry_jitter", 0.0)
    return CasaTokenRenewal(
        token_dir=str(token_dir), api_url=api_url or f"http://127.0.0.1:{free_port()}/hub/api",
        api_token="server-credential", clock=ft.clock, sleep=ft.sleep, **kw,
    )


# ---- arithmetic ----------------------------------------------------------------------------------


def test_renewal_time_is_the_configured_fraction_of_the_lifetime():
    assert renewal_time(T0, T0 + 1200, 2 / 3) == pytest.approx(T0 + 800)
    assert renewal_time(T0, T0 + 30, 0.5) == T0 + 15
    assert renewal_time(T0, T0 - 5, 2 / 3) == T0, "a token with exp before iat is due at once"


def test_retry_delays_double_up_to_the_cap():
    delays = [retry_delay(n, now=T0, expires_at=T0 + 10_000, initial=5, maximum=300, jitter=0, rand=0.5)
              for n in range(9)]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_jitter_shortens_delays_within_its_fraction():
    low = retry_delay(3, now=T0, expires_at=T0 + 999, initial=5, maximum=300, jitter=0.25, rand=0.999999)
    high = retry_delay(3, now=T0, expires_at=T0 + 999, initial=5, maximum=300, jitter=0.25, rand=0.0)
    assert high == 40 and low == pytest.approx(30, abs=1e-3)


def test_retry_after_is_honoured_but_never_past_expiry():
    kw = dict(now=T0, initial=5, maximum=300, jitter=0, rand=0)
    assert retry_delay(0, expires_at=T0 + 600, retry_after=42, **kw) == 42
    assert retry_delay(0, expires_at=T0 + 600, retry_after=1, **kw) == 5, "backoff wins when longer"
    assert retry_delay(0, expires_at=T0 + 30, retry_after=120, **kw) == 30, "capped at the token's expiry"
    assert retry_delay(6, expires_at=T0 + 7, **kw) == 7
    assert retry_delay(6, expires_at=T0 - 1, **kw) == 300, "an expired token: plain capped backoff"


def test_retry_after_header_forms():
    assert parse_retry_after("7", T0) == 7
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", T0) == pytest.approx(20, abs=1)
    assert parse_retry_after("soon", T0) is None and parse_retry_after(None, T0) is None


def test_settings_are_validated():
    with pytest.raises(TraitError, match="renew_fraction must be between 0 and 1"):
        CasaTokenRenewal(renew_fraction=1.5)
    with pytest.raises(TraitError, match="retry_jitter"):
        CasaTokenRenewal(retry_jitter=-0.1)


# ---- the schedule of one grant, with an injected clock and an unreachable hub -----------------


async def test_schedule_sleeps_until_two_thirds_then_backs_off_without_passing_expiry(token_dir):
    path = token_dir / "xcache.token"
    original = make_token(T0, T0 + 30)
    write_token_file(path, original)
    ft = FakeTime(T0, max_sleeps=6)
    agent = agent_for(token_dir, ft, retry_initial=5, retry_max=60)
    with pytest.raises(Enough):
        await agent.keep_fresh("xcache")
    st = agent.states["xcache"]
    # sleep to the renewal point (iat + 20 s), then retries: 5 s, then capped at expiry (5 s left),
    # then plain doubling once the token has expired
    assert ft.sleeps == [20, 5, 5, 20, 40, 60]
    assert st.retry_delays == [5, 5, 20, 40, 60, 60]
    assert st.attempts == 6 and st.renewals == 0 and st.status == "retrying"
    assert "cannot reach the hub" in st.last_error
    assert path.read_text() == original, "the old token stays in place while the hub is unreachable"


async def test_a_file_replaced_by_someone_else_resets_the_backoff(token_dir):
    path = token_dir / "xcache.token"
    write_token_file(path, make_token(T0, T0 + 30))
    ft = FakeTime(T0 + 20)
    agent = agent_for(token_dir, ft, retry_initial=5, retry_max=60)
    assert await agent.renew("xcache") == "retry"
    assert await agent.renew("xcache") == "retry"
    assert agent.states["xcache"].failures == 2
    write_token_file(path, make_token(T0 + 20, T0 + 50, jti="from-the-spawner"))
    st = agent.states["xcache"]
    assert agent.due_at(st, read_token_times(path)) == pytest.approx(T0 + 40)
    assert st.failures == 0 and st.retry_at is None


async def test_once_mode_renews_only_what_is_due(token_dir):
    write_token_file(token_dir / "xcache.token", make_token(T0, T0 + 1200))
    ft = FakeTime(T0 + 100)
    agent = agent_for(token_dir, ft)
    assert await agent.run_once() == {"xcache": "not due"}
    assert agent.states["xcache"].attempts == 0
    ft.t = T0 + 900
    assert await agent.run_once(attempts=3) == {"xcache": "failed"}
    assert agent.states["xcache"].attempts == 3 and ft.sleeps == [5, 10]


async def test_an_unreadable_token_file_is_renewed_at_once(token_dir, caplog):
    (token_dir / "xcache.token").write_text("not a jwt")
    ft = FakeTime(T0, max_sleeps=1)
    agent = agent_for(token_dir, ft, log=logging.getLogger("test-renewal"))
    with caplog.at_level(logging.WARNING, "test-renewal"), pytest.raises(Enough):
        await agent.keep_fresh("xcache")
    st = agent.states["xcache"]
    assert st.attempts == 2 and st.retry_delays == [5, 10] and ft.sleeps == [5]
    assert caplog.text.count("holds no readable token; renewing it now") == 1
    assert "the current file holds no readable token" in caplog.text


def test_only_grant_token_files_are_picked_up(token_dir):
    for name in ("xcache.token", "htcondor.token", ".xcache.token.abc.tmp", "notes.txt", ".hidden.token"):
        (token_dir / name).write_text("x")
    (token_dir / "dir.token").mkdir()
    assert sorted(grant_files(token_dir)) == ["htcondor", "xcache"]
    assert grant_files(token_dir / "missing") == {}


# ---- atomic replacement ------------------------------------------------------------------------


def test_replace_is_atomic_private_and_leaves_no_temp_files(token_dir):
    path = token_dir / "xcache.token"
    old, new = make_token(T0, T0 + 30, "old"), make_token(T0 + 20, T0 + 50, "new")
    write_token_file(path, old)
    with open(path, "rb") as held:  # a reader that opened the file before the renewal ...
        old_inode = os.stat(path).st_ino
        write_token_file(path, new)
        assert held.read().decode() == old, "... still reads the complete old token: not rewritten in place"
    assert path.read_text() == new
    assert os.stat(path).st_ino != old_inode
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in token_dir.iterdir()) == ["xcache.token"]


def test_a_failed_write_keeps_the_old_file(token_dir, monkeypatch):
    path = token_dir / "xcache.token"
    old = make_token(T0, T0 + 30, "old")
    write_token_file(path, old)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_token_file(path, make_token(T0 + 20, T0 + 50, "new"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in token_dir.iterdir()) == ["xcache.token"]


def test_a_concurrent_reader_only_ever_sees_complete_tokens(token_dir):
    path = token_dir / "xcache.token"
    tokens = [make_token(T0 + i, T0 + i + 30, f"jti-{i}" * 40) for i in range(300)]
    write_token_file(path, tokens[0])
    valid, seen, bad = set(tokens), [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            content = path.read_text()
            (seen if content in valid else bad).append(content)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for tok in tokens[1:]:
            write_token_file(path, tok)
    finally:
        stop.set()
        t.join()
    assert not bad, f"{len(bad)} partial reads, e.g. {bad[0][:40]!r}"
    assert seen, "the reader read nothing"


# ---- broker answers (a scripted HTTP endpoint: the real hub never answers 5xx on demand) --------


class Scripted(RequestHandler):
    def initialize(self, script: list, calls: list) -> None:
        self.script, self.calls = script, calls

    def post(self, grant: str) -> None:
        self.calls.append((grant, self.request.headers.get("Authorization")))
        code, headers, body = self.script.pop(0)
        self.set_status(code)
        for k, v in headers.items():
            self.set_header(k, v)
        self.finish(body)


@pytest.fixture
async def scripted_hub():
    script, calls = [], []
    port = free_port()
    server = HTTPServer(Application([(r"/hub/api/casa/tokens/([^/]+)", Scripted, {"script": script, "calls": calls})]))
    server.listen(port, "127.0.0.1")
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/hub/api", script=script, calls=calls)
    server.stop()


async def test_5xx_429_and_bad_answers_are_retried_then_the_file_is_replaced(token_dir, scripted_hub, caplog):
    path = token_dir / "xcache.token"
    old = make_token(T0, T0 + 3000, "old")
    write_token_file(path, old)
    fresh = make_token(T0 + 2000, T0 + 5000, "fresh")
    scripted_hub.script.extend([
        (503, {}, json.dumps({"status": 503, "message": "hub restarting"})),
        (429, {"Retry-After": "42"}, "{}"),
        (200, {}, json.dumps({"grant": "xcache"})),  # no token in it
        (200, {}, json.dumps({"token": fresh})),
    ])
    ft = FakeTime(T0 + 2000)
    agent = agent_for(token_dir, ft, api_url=scripted_hub.url, log=logging.getLogger("test-renewal"))
    with caplog.at_level(logging.INFO, "test-renewal"):
        assert await agent.run_once(attempts=5) == {"xcache": "renewed"}
    st = agent.states["xcache"]
    assert st.attempts == 4 and st.retry_afters == [None, 42, None]
    assert st.retry_delays == [5, 42, 20]
    assert path.read_text() == fresh and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert scripted_hub.calls == [("xcache", "token server-credential")] * 4
    assert "HTTP 503 from the hub hub restarting" in caplog.text
    assert "renewed 'xcache'" in caplog.text and "jti=fresh" in caplog.text
    assert fresh not in caplog.text and old not in caplog.text and "server-credential" not in caplog.text


@pytest.mark.parametrize("status", [403, 404, 401])
async def test_refused_grant_is_dropped_and_its_file_kept(token_dir, scripted_hub, caplog, status):
    path = token_dir / "operations.token"
    write_token_file(path, make_token(T0, T0 + 30))
    before = path.read_bytes()
    scripted_hub.script.append((status, {}, json.dumps({"message": "You may not receive 'operations' tokens."})))
    ft = FakeTime(T0 + 25)
    agent = agent_for(token_dir, ft, api_url=scripted_hub.url, log=logging.getLogger("test-renewal"))
    with caplog.at_level(logging.ERROR, "test-renewal"):
        await agent.keep_fresh("operations")  # returns: no more attempts
    st = agent.states["operations"]
    assert st.status == "stopped" and st.attempts == 1 and st.retry_delays == []
    assert path.read_bytes() == before
    assert f"the hub refused to renew grant 'operations' (HTTP {status}" in caplog.text
    assert "no longer renewing" in caplog.text


# ---- glue: Jupyter server extension, spawner, command ------------------------------------------


class FakeServerApp(LoggingConfigurable):
    web_app = SimpleNamespace(settings={})


async def test_extension_does_nothing_without_a_token_dir(monkeypatch):
    monkeypatch.delenv("CASA_TOKEN_DIR", raising=False)
    app = FakeServerApp(log=logging.getLogger("test-ext"))
    app.web_app = SimpleNamespace(settings={})
    assert renewal_ext._jupyter_server_extension_points() == [{"module": "casa_hub.tokens.renewal.server_extension"}]
    renewal_ext._load_jupyter_server_extension(app)
    await renewal_ext._start_jupyter_server_extension(app)
    assert app.web_app.settings == {}


async def test_extension_runs_the_agent_as_a_task_in_the_server_loop(monkeypatch, token_dir):
    monkeypatch.setenv("CASA_TOKEN_DIR", str(token_dir))
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:1/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "server-credential")
    app = FakeServerApp(log=logging.getLogger("test-ext"))
    app.web_app = SimpleNamespace(settings={})
    renewal_ext._load_jupyter_server_extension(app)
    agent = app.web_app.settings["casa_token_renewal"]
    assert agent.token_dir == str(token_dir) and agent.log is app.log
    await renewal_ext._start_jupyter_server_extension(app)
    task = app.web_app.settings["casa_token_renewal_task"]
    await asyncio.sleep(0.05)
    assert not task.done(), "the agent keeps running in the server's loop"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("enabled", [True, False])
def test_spawner_enables_the_extension_for_its_servers(enabled):
    spawner = CasaLocalProcessSpawner(user=SimpleNamespace(name="alice"), hub=Hub(), args=["--allow-root"],
                                      renewal_agent=enabled)
    ext = "--ServerApp.jpserver_extensions=casa_hub.tokens.renewal.server_extension=True"
    assert spawner.get_args() == (["--allow-root", ext] if enabled else ["--allow-root"])
    assert spawner.args == ["--allow-root"], "the configured args are not modified"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CASA_"))}
    return subprocess.run([sys.executable, "-m", "casa_hub.cli", "renew-tokens", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_command_without_token_dir_says_so():
    r = run_cli("--once", env={})
    assert r.returncode == 2 and "CASA_TOKEN_DIR is not set" in r.stderr


def test_command_once_with_unreachable_hub_keeps_the_file(token_dir):
    path = token_dir / "xcache.token"
    token = make_token(T0, T0 + 30)
    write_token_file(path, token)
    r = run_cli("--once", "--attempts", "1", env={
        "CASA_TOKEN_DIR": str(token_dir), "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
        "JUPYTERHUB_API_TOKEN": "server-credential"})
    assert r.returncode == 1, r.stderr
    assert "xcache: failed" in r.stdout and "cannot reach the hub" in r.stderr
    assert path.read_text() == token
    assert token not in r.stdout + r.stderr and "server-credential" not in r.stdout + r.stderr


def test_command_runs_until_sigterm_and_stops_cleanly(token_dir):
    write_token_file(token_dir / "xcache.token", make_token(T0, T0 + 30))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CASA_"))}
    env = {**base, "CASA_TOKEN_DIR": str(token_dir), "JUPYTERHUB_API_TOKEN": "server-credential",
           "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api"}
    proc = subprocess.Popen([sys.executable, "-m", "casa_hub.cli", "renew-tokens"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("could not renew 'xcache'" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"the agent exited early: {''.join(lines)}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and "server-credential" not in "".join(lines) + rest


async def test_read_only_token_dir_leaves_delivery_to_the_hub(token_dir, scripted_hub, caplog, monkeypatch):
    """On Kubernetes the token dir is a read-only Secret mount: the broker call makes the hub patch the
    Secret, so the agent counts the renewal done and looks again later instead of retrying at once."""
    import errno

    from casa_hub.tokens.renewal import agent as renewal

    path = token_dir / "xcache.token"
    old = make_token(T0, T0 + 3000, "old")
    write_token_file(path, old)

    def read_only(p, token):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(renewal, "write_token_file", read_only)
    monkeypatch.setattr(renewal.os, "access", lambda p, mode: False)
    scripted_hub.script.append((200, {}, json.dumps({"token": make_token(T0 + 2000, T0 + 5000, "fresh")})))
    ft = FakeTime(T0 + 2000)
    agent = agent_for(token_dir, ft, api_url=scripted_hub.url, log=logging.getLogger("test-renewal"))
    with caplog.at_level(logging.INFO, "test-renewal"):
        assert await agent.run_once(attempts=1) == {"xcache": "renewed"}
    st = agent.states["xcache"]
    assert st.retry_delays == [] and st.not_before == T0 + 2000 + agent.read_only_recheck
    assert path.read_text() == old, "the agent never writes into a read-only mount"
    assert "is read-only, the hub delivers the new token" in caplog.text
