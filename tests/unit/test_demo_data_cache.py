"""The demo's data cache as planned before anything starts, and the byte relay that reaches into its namespace.

What the site file and the issuer become with and without the cache (``DemoFacility.prepare``), the refusal of
an issuer override the cache could not trust, and ``casa_hub/demo/bridge.py tcp-to-unix`` relaying bytes both
ways. The running cache itself: tests/e2e/test_demo_command.py, tests/e2e/test_analysis_on_the_facility.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from casa_hub.common.ports import free_port
from casa_hub.demo import facility as facility_module
from casa_hub.demo.data_cache import BRIDGE, DataCacheError
from casa_hub.demo.facility import DemoError, DemoFacility


def make(tmp_path: Path, monkeypatch, missing: str | None, **kw) -> DemoFacility:
    monkeypatch.setattr(facility_module, "data_cache_missing", lambda: missing)
    messages: list[str] = []
    fac = DemoFacility(tmp_path / "state", hub_port=free_port(), idp_port=free_port(), xcache=True, data_events=0,
                       progress=messages.append, **kw)
    fac.messages = messages
    return fac


def test_with_the_cache_the_site_file_points_notebooks_at_it(tmp_path, monkeypatch):
    fac = make(tmp_path, monkeypatch, None)
    fac.prepare()
    cache = fac.data_cache
    site = json.loads((fac.state_dir / "site.json").read_text())
    assert fac.issuer_url == f"https://localhost:{cache.issuer_port}/hub/casa-issuer" == site["tokens"]["issuer_url"]
    assert site["integrations"]["xcache"] == {"endpoint": f"root://localhost:{cache.cache_port}",
                                              "ca_dir": str(cache.ca_dir)}
    grants = site["tokens"]["grants"]
    assert grants["xcache"]["scopes"] == ["storage.read:/user/{username}", "storage.read:/data"]
    assert grants["xcache"]["audience"] == "casa-demo-xcache"
    assert grants["operations"]["audience"] == "casa-demo-operations", "an admin's everyday token reads no more"
    settings = json.loads((fac.state_dir / "settings.json").read_text())
    assert settings["data_cache"] == {"url": cache.url, "ca_dir": str(cache.ca_dir)}
    assert not cache.run_dir.exists(), "nothing is created before start"
    # each physicist has a directory with the sample in the namespace; eve (a visitor) has none
    user_dirs = fac.state_dir / "data" / "store" / "user"
    assert sorted(p.name for p in user_dirs.iterdir()) == ["alice", "bob"]
    assert (user_dirs / "alice" / "sample" / "nano.root").stat().st_size > 0


def test_without_xrootd_the_demo_says_so_and_reads_local_files(tmp_path, monkeypatch):
    fac = make(tmp_path, monkeypatch, "the XRootD SciTokens plugin is not installed")
    fac.prepare()
    assert fac.data_cache is None
    assert any("no data cache: the XRootD SciTokens plugin is not installed" in m and "local files" in m
               for m in fac.messages), fac.messages
    site = json.loads((fac.state_dir / "site.json").read_text())
    assert site["integrations"]["xcache"] == {} and site["tokens"]["issuer_url"].startswith("http://127.0.0.1:")
    assert site["tokens"]["grants"]["xcache"]["scopes"] == ["storage.read:/user/{username}"]
    assert json.loads((fac.state_dir / "settings.json").read_text())["data_cache"] is None


def test_a_cache_that_cannot_start_leaves_a_facility_without_it(tmp_path, monkeypatch):
    """XRootD installed but unable to start (e.g. no mount namespaces in a container): the demo says why and
    runs on, its site file and issuer as without the cache, nothing of the cache left behind."""
    fac = make(tmp_path, monkeypatch, None)
    fac.prepare()
    cache = fac.data_cache

    def fail(timeout):
        cache.run_dir.mkdir(parents=True)
        raise DataCacheError("xrootd cache failed to start: cannot mount")

    monkeypatch.setattr(cache, "start", fail)
    fac.start_data_cache(5)
    assert fac.data_cache is None and not cache.run_dir.exists()
    assert any("the data cache did not start, running without it" in m and "cannot mount" in m
               for m in fac.messages), fac.messages
    site = json.loads((fac.state_dir / "site.json").read_text())
    assert site["integrations"]["xcache"] == {} and site["tokens"]["issuer_url"].startswith("http://127.0.0.1:")
    assert json.loads((fac.state_dir / "settings.json").read_text())["data_cache"] is None


def test_an_issuer_the_cache_cannot_trust_is_refused(tmp_path, monkeypatch):
    fac = make(tmp_path, monkeypatch, None, issuer_url_override="https://issuer.example.org")
    with pytest.raises(DemoError, match="data cache verifies tokens of the demo's own issuer"):
        fac.prepare()


def test_the_tcp_to_unix_relay_carries_bytes_both_ways(tmp_path):
    sock_path = Path(tempfile.mkdtemp(prefix="relay-")) / "s"  # short: unix socket paths are limited
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)

    def echo_upper():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())

    threading.Thread(target=echo_upper, daemon=True).start()
    port, ready = free_port(), tmp_path / "ready"
    relay = subprocess.Popen([sys.executable, str(BRIDGE), "tcp-to-unix", "--unix", str(sock_path), "--port",
                              str(port), "--ready-file", str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert relay.poll() is None and time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.05)
        payload = b"root://" + bytes(range(256)) * 512
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got == payload.upper()
    finally:
        relay.terminate()
        relay.wait(10)
        server.close()
