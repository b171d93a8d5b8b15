"""`casa-hub demo` itself: starts, answers, lets a user log in, stops everything, reuses its state."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from helpers import http_login

from casa_hub.analysis.sample import SAMPLE_FILE
from casa_hub.common.files import write_private
from casa_hub.common.ports import free_port
from casa_hub.demo.data_cache import data_cache_missing

pytestmark = [pytest.mark.e2e, pytest.mark.one_hub_version]  # the command line: one JupyterHub version


def run_demo(state: Path, hub_port: int, idp_port: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "casa_hub.cli", "demo", "--state-dir", str(state),
         "--port", str(hub_port), "--idp-port", str(idp_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    proc.lines = lines
    out = ""
    deadline = time.monotonic() + 90
    try:
        while "Press Ctrl-C" not in out:
            assert time.monotonic() < deadline, f"demo did not become ready:\n{out}"
            assert proc.poll() is None or not lines.empty(), f"demo exited early ({proc.returncode}):\n{out}"
            try:
                out += lines.get(timeout=1.0)
            except queue.Empty:
                pass
    except BaseException:
        if proc.poll() is None:
            stop_demo(proc)  # leave nothing running when the start fails
        raise
    return proc, out


def _drain(q: queue.Queue[str]) -> str:
    out = ""
    while not q.empty():
        out += q.get_nowait()
    return out


def stop_demo(proc: subprocess.Popen) -> tuple[int, str]:
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert tree, "the demo should have started child processes"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    time.sleep(0.2)
    rest = _drain(proc.lines)
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"processes left behind: {[p.cmdline() for p in alive]}"
    return proc.returncode, rest


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout if shutil.which("ip") else ""
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def read_through_cache(cache: dict, token: str, path: str, scratch: Path) -> subprocess.CompletedProcess:
    """``xrdcp`` from the demo's cache with ``token`` in a 0600 ``BEARER_TOKEN_FILE``."""
    token_file = write_private(scratch / "xcache.token", token)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "X509_CERT_DIR": cache["ca_dir"],
           "BEARER_TOKEN_FILE": str(token_file), "XRD_REQUESTTIMEOUT": "30"}
    return subprocess.run(["xrdcp", "--nopbar", "-f", f"{cache['url']}/{path}", "-"], env=env,
                          capture_output=True, timeout=60)


@pytest.mark.slow(45)  # two runs of the whole demo
def test_demo_starts_logs_in_and_stops_cleanly_then_reuses_state(tmp_path):
    state = tmp_path / "demo-state"
    hub_port, idp_port = free_port(), free_port()
    proc, out = run_demo(state, hub_port, idp_port)
    try:
        assert "creating demo state" in out and f"http://127.0.0.1:{hub_port}/" in out
        users = json.loads((state / "idp" / "users.json").read_text())
        alice = next(u for u in users if u["username"] == "alice")
        assert alice["password"] in out, "the demo prints its logins"
        assert requests.get(f"http://127.0.0.1:{hub_port}/hub/api", timeout=10).status_code == 200
        s, r = http_login(f"http://127.0.0.1:{hub_port}", "alice", alice["password"])
        assert r.status_code == 200 and r.url.startswith(f"http://127.0.0.1:{hub_port}/")
        me = s.get(f"http://127.0.0.1:{hub_port}/hub/api/user",
                   headers={"X-XSRFToken": s.cookies.get("_xsrf", "")}, timeout=10).json()
        assert me["name"] == "alice" and "physicists" in me["groups"]
        kid = requests.get(f"http://127.0.0.1:{hub_port}/hub/casa-issuer/jwks.json", timeout=10).json()["keys"][0]["kid"]
        # the facility's MLflow tracking server is up and takes alice's MLflow token as alice
        mlflow_url = re.search(r"MLflow tracking server: (http://127\.0\.0\.1:\d+)", out).group(1)
        assert requests.get(f"{mlflow_url}/health", timeout=10).status_code == 200
        token = s.post(f"http://127.0.0.1:{hub_port}/hub/api/casa/tokens/mlflow",
                       headers={"X-XSRFToken": s.cookies.get("_xsrf", "")}, timeout=10).json()["token"]
        made = requests.post(f"{mlflow_url}/api/2.0/mlflow/experiments/create", json={"name": "alice-first"},
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert made.status_code == 200, made.text[:300]
        assert requests.post(f"{mlflow_url}/api/2.0/mlflow/experiments/create", json={"name": "anonymous"},
                             timeout=30).status_code == 401, "no token, no MLflow"
        # the data cache is up (real XRootD origin + XCache) and serves alice her own directory with her token
        cache = json.loads((state / "settings.json").read_text())["data_cache"]
        if data_cache_missing() is None:
            assert f"Data cache (XCache): {cache['url']}" in out
            xcache = s.post(f"http://127.0.0.1:{hub_port}/hub/api/casa/tokens/xcache",
                            headers={"X-XSRFToken": s.cookies.get("_xsrf", "")}, timeout=10).json()["token"]
            read = read_through_cache(cache, xcache, "/store/user/alice/sample/nano.root", tmp_path)
            assert read.returncode == 0 and read.stdout == SAMPLE_FILE.read_bytes(), read.stderr[-500:]
            run_dir = Path(cache["ca_dir"]).parent
            # its own namespace (other facilities, in this worker or another, run their own caches): the
            # run directory's tag (facility.py)
            ours = f"casa-demo-{run_dir.name.removeprefix('casa-demo-xrootd-')}"
            assert run_dir.is_dir() and ours in netns_names(), ours
        else:
            assert cache is None and "no data cache:" in out, "the demo says plainly that it runs without the cache"
    finally:
        code, rest = stop_demo(proc)
    assert code == 0 and "stopped" in rest
    if cache:
        assert not run_dir.exists(), "the cache's run directory is removed"
        assert ours not in netns_names(), "the cache's namespace is deleted"
    assert oct((state / "secrets" / "crypt_key").stat().st_mode & 0o777) == "0o600"
    assert oct(state.stat().st_mode & 0o777) == "0o700"

    # a second run reuses keys, users and the database
    proc, out = run_demo(state, hub_port, idp_port)
    try:
        assert "reusing demo state" in out and alice["password"] in out
        again = requests.get(f"http://127.0.0.1:{hub_port}/hub/casa-issuer/jwks.json", timeout=10).json()
        assert again["keys"][0]["kid"] == kid
        s, r = http_login(f"http://127.0.0.1:{hub_port}", "alice", alice["password"])
        assert r.status_code == 200
    finally:
        code, _ = stop_demo(proc)
    assert code == 0


def test_demo_refuses_a_busy_port_with_a_clear_message(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "casa_hub.cli", "demo", "--state-dir", str(tmp_path / "s"),
             "--port", str(port), "--idp-port", str(free_port())],
            capture_output=True, text=True, timeout=60, env=dict(os.environ),
        )
    assert r.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use; choose another with --port" in r.stderr
