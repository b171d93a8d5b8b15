"""Worker credential renewal (casa_hub.dask.worker_renewal) on a real Dask cluster of local processes.

The tokens here are JWTs signed with a throw-away key: the workers compare claims, they never verify
(the storage verifies). tests/site/test_worker_renewal_site.py runs the same mechanism against the real
hub, the real XCache, a real Dask Gateway and real Slurm.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import jwt
import pytest
from distributed import Client, LocalCluster

from casa_hub.common.files import write_private
from casa_hub.dask.worker_renewal import (
    PLUGIN_NAME,
    StorageTokenPlugin,
    TokenRefused,
    WorkerTokenPusher,
    decide,
    keep_worker_tokens_fresh,
    token_file_for,
)

BASE = {"iss": "https://hub.example.org/hub/casa-issuer", "sub": "alice", "aud": "xcache",
        "scope": "storage.read:/user/alice"}


def make_token(lifetime: float = 60, **claims: object) -> str:
    now = int(time.time())
    body = {**BASE, "iat": now, "exp": now + int(lifetime), "jti": uuid.uuid4().hex, **claims}
    return jwt.encode(body, "k" * 32, algorithm="HS256")


def jti(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


# ---- the rule each worker applies ----------------------------------------------------------------


def test_decide_replaces_only_a_later_token_of_the_same_identity():
    now = time.time()
    current = {**BASE, "exp": now + 30}
    assert decide(None, {**BASE, "exp": now + 10}, now) == (True, "the worker had no readable token")
    assert decide(current, {**BASE, "exp": now + 60}, now) == (True, "renewed")
    assert decide(current, {**BASE, "exp": now + 30}, now)[0] is False
    assert decide(current, {**BASE, "exp": now + 20}, now) == (False, "the worker's token lives as long or longer")
    assert decide(current, {**BASE, "exp": now - 1}, now) == (False, "the pushed token has expired")
    assert decide(None, {**BASE, "exp": now - 1}, now)[0] is False
    for claim, other in (("sub", "bob"), ("aud", "mlflow"), ("iss", "https://evil.example"),
                         ("scope", "storage.read:/")):
        with pytest.raises(TokenRefused, match=claim) as e:
            decide(current, {**BASE, claim: other, "exp": now + 60}, now)
        assert other not in str(e.value), "the message names claims, not their values"


def test_token_file_for_follows_the_notebook_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CASA_TOKEN_DIR", raising=False)
    monkeypatch.delenv("CASA_WORKER_STORAGE_GRANT", raising=False)
    assert token_file_for() is None
    monkeypatch.setenv("CASA_TOKEN_DIR", str(tmp_path))
    assert token_file_for() == tmp_path / "xcache.token"
    monkeypatch.setenv("CASA_WORKER_STORAGE_GRANT", "xcache-worker")
    assert token_file_for() == tmp_path / "xcache-worker.token"
    assert token_file_for("other", "/t") == Path("/t/other.token")


# ---- on real worker processes ------------------------------------------------------------------------


def worker_view(dask_worker) -> dict:  # runs on a worker
    path = os.environ.get("BEARER_TOKEN_FILE", "")
    facts = {"path": path, "record": getattr(dask_worker, "casa_storage_token", None)}
    if path and os.path.exists(path):
        facts["token"] = Path(path).read_text()
        facts["mode"] = stat.S_IMODE(os.stat(path).st_mode)
        facts["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
        facts["in_local_dir"] = path.startswith(dask_worker.local_directory)
    return facts


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)  # workers inherit this process's environment
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as c, Client(c) as client:
        yield c, client


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_pushed_tokens_reach_every_worker_now_and_later_and_only_newer_ones_replace(cluster, tmp_path):
    c, client = cluster
    token_file = tmp_path / "xcache.token"
    first = make_token(60)
    token_file.write_text(first)
    pusher = WorkerTokenPusher(client, token_file, interval=0.2)

    # 1. workers that had no token get a private file in their own directory, and the variable
    answers = pusher.push_once()
    assert sorted(answers) == sorted(client.scheduler_info()["workers"]) and all(
        a["status"] == "OK" for a in answers.values()), answers
    views = client.run(worker_view)
    for addr, v in views.items():
        assert v["token"] == first and v["in_local_dir"], (addr, v["path"])
        assert v["mode"] == 0o600 and v["dir_mode"] == 0o700
        assert v["record"]["outcome"] == "replaced" and v["record"]["jti"] == jti(first)
    assert len({v["path"] for v in views.values()}) == 2, "workers must not share a token file"
    assert pusher.push_once() is None, "the same token must not be pushed twice"

    # 2. the agent renews the file: the running pusher brings the new token to every worker
    pusher.start()
    second = make_token(120)
    write_private(token_file, second)  # atomically, as the renewal agent does
    wait_for(lambda: pusher.pushed_jti == jti(second) and all(
        v.get("token") == second for v in client.run(worker_view).values()), what="the renewal")  # counted after the push
    assert pusher.pushes == 2, "one push per new token"

    # 3. a worker that joins afterwards receives the latest token from the scheduler
    c.scale(3)
    client.wait_for_workers(3, timeout=60)
    views = client.run(worker_view)
    assert len(views) == 3 and all(v["token"] == second for v in views.values()), views

    # 4. a token that expires sooner than the workers' is not taken; one of another user is refused
    shorter = make_token(30)
    write_private(token_file, shorter)
    wait_for(lambda: pusher.pushed_jti == jti(shorter), what="the push of the shorter token")
    views = client.run(worker_view)
    assert all(v["token"] == second and v["record"]["outcome"] == "kept" for v in views.values()), views
    # a token of another user in the file is not pushed; pushed anyway, every worker refuses it
    bobs = make_token(600, sub="bob", scope="storage.read:/user/bob")
    write_private(token_file, bobs)
    wait_for(lambda: pusher.skipped_jti == jti(bobs), what="the pusher to look at bob's token")
    assert "another identity" in pusher.last_error and pusher.pushed_jti == jti(shorter)
    expired = make_token(-5)
    write_private(token_file, expired)
    wait_for(lambda: pusher.skipped_jti == jti(expired), what="the pusher to look at an expired token")
    assert "expired" in pusher.last_error
    pusher.stop()
    assert all(v["token"] == second for v in client.run(worker_view).values())
    with pytest.raises(TokenRefused, match="differs from the worker's in sub, scope"):
        client.register_plugin(StorageTokenPlugin(bobs), name=PLUGIN_NAME)
    views = client.run(worker_view)
    assert all(v["token"] == second and v["record"]["outcome"] == "refused" for v in views.values()), views

    # token values never reach the workers' logs
    logs = "\n".join(line for lines in client.get_worker_logs().values() for _, line in lines)
    assert "casa worker token" in logs
    for value in (first, second, shorter, bobs):
        assert value not in logs and value.split(".")[2] not in logs


def test_the_pusher_keeps_going_when_the_file_is_briefly_unreadable_and_stops_with_its_client(cluster, tmp_path):
    _, client = cluster
    token_file = tmp_path / "xcache.token"
    pusher = WorkerTokenPusher(client, token_file, interval=0.2).start()
    time.sleep(0.6)  # no file yet: nothing pushed, no crash
    assert pusher.pushes == 0 and "cannot read" in pusher.last_error and pusher._thread.is_alive()
    token = make_token(60)
    token_file.write_text(token)
    wait_for(lambda: all(v.get("token") == token for v in client.run(worker_view).values()), what="first push")
    client.close()
    wait_for(lambda: not pusher._thread.is_alive(), what="the pusher to stop with its client")


def test_keep_worker_tokens_fresh_starts_one_pusher_per_client(cluster, tmp_path, monkeypatch):
    _, client = cluster
    monkeypatch.setenv("CASA_TOKEN_DIR", str(tmp_path))
    monkeypatch.delenv("CASA_WORKER_STORAGE_GRANT", raising=False)
    assert keep_worker_tokens_fresh(client) is None  # no xcache.token: nothing to push
    token = make_token(60)
    (tmp_path / "xcache.token").write_text(token)
    pusher = keep_worker_tokens_fresh(client, interval=0.2)
    try:
        assert pusher is not None and keep_worker_tokens_fresh(client) is pusher
        wait_for(lambda: all(v.get("token") == token for v in client.run(worker_view).values()), what="the push")
        assert PLUGIN_NAME in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    finally:
        pusher.stop()


JOBS_PYTHON = Path(__file__).resolve().parents[2] / ".venv-jobs" / "bin" / "python"
ON_A_BARE_WORKER = """
import os, pickle, sys, types
from pathlib import Path
try:
    import casa_hub
    sys.exit("casa_hub is importable here")
except ImportError:
    pass
plugin = pickle.loads(Path(sys.argv[1]).read_bytes())
worker = types.SimpleNamespace(local_directory=sys.argv[2])
plugin.setup(worker=worker)
print(os.environ["BEARER_TOKEN_FILE"], worker.casa_storage_token["outcome"])
"""


def test_the_plugin_runs_on_a_worker_without_casa_hub(tmp_path):
    """Workers of any image renew: the plugin travels by value and needs only distributed there."""
    from distributed.protocol.pickle import dumps

    assert JOBS_PYTHON.exists(), "scripts/install.sh test creates .venv-jobs (distributed, no casa_hub)"
    token = make_token(60)
    (tmp_path / "plugin.pickle").write_bytes(dumps(StorageTokenPlugin(token)))
    (tmp_path / "worker").mkdir()
    r = subprocess.run([str(JOBS_PYTHON), "-I", "-c", ON_A_BARE_WORKER, str(tmp_path / "plugin.pickle"),
                        str(tmp_path / "worker")], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    path, outcome = r.stdout.split()
    assert outcome == "replaced" and Path(path).read_text() == token
    assert Path(path).parent == tmp_path / "worker" / "casa-tokens"
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
