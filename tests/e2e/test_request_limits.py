"""The hub reads no large request body (``CasaHubServer.max_body_size``, casa_hub/hub_server.py).

A body announced larger than the limit (default 4 MiB) is refused before the hub reads any of it,
with or without a credential, through the proxy and at the hub's own API URL, and the hub process's
memory stays where it was; requests within the limit (sign-in, the token broker with a body of
exactly the limit) are served. The facility is the session's default one: the limit is casa_hub's
default, set by the auth drop-in, as on any hub configured through the site file.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import psutil
import pytest
import requests
from helpers import admin_api, http_login

from casa_hub.demo.facility import DemoFacility
from casa_hub.hub_server import CasaHubServer

pytestmark = pytest.mark.e2e

LIMIT = CasaHubServer.class_traits()["max_body_size"].default_value
BIG = 50 * 2**20
#: the hub process may grow this much while it is sent 4 x 50 MB (without the limit: 200 MB)
RSS_SLACK = 8 * 2**20


@dataclass
class Upload:
    """A POST whose body was sent as far as the server read it."""

    sock: socket.socket
    sent: int  # body bytes the server took before it closed the connection


def ports(fac: DemoFacility) -> dict[str, int]:
    """The proxy's port (the hub's public URL) and the hub's own API port (what notebooks and services use)."""
    api_port = json.loads((fac.state_dir / "settings.json").read_text())["hub_api_port"]
    return {"proxy": urlparse(fac.hub_url).port, "hub": api_port}


def post(port: int, path: str, length: int, send: int, headers: dict[str, str] | None = None) -> Upload:
    """Announce a body of ``length`` bytes and send ``send`` of them (less than ``length``: the request
    stays incomplete, so a server that reads it must hold what it read), stopping when the server
    closes the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
            f"Content-Length: {length}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    chunk, sent = b"x" * 2**20, 0
    try:
        while sent < send:
            n = min(len(chunk), send - sent)
            sock.sendall(chunk[:n])
            sent += n
    except (BrokenPipeError, ConnectionResetError):
        pass
    return Upload(sock, sent)


def answer(upload: Upload) -> int | None:
    """The status of the server's answer; None when it closed the connection without one."""
    try:
        first = upload.sock.recv(4096).split(b"\r\n", 1)[0]
    except ConnectionResetError:
        return None
    finally:
        upload.sock.close()
    return int(first.split()[1]) if first.startswith(b"HTTP/1.1 ") else None


def mints(fac: DemoFacility) -> int:
    """How many tokens the hub has minted (its audit lines)."""
    return (fac.log_dir / "hub.log").read_text(errors="replace").count(" mint user=")


def test_a_50_mb_body_without_credential_is_refused_unread(facility):
    hub = psutil.Process(facility.procs["hub"].pid)
    assert "jupyterhub" in " ".join(hub.cmdline())
    where = ports(facility)
    targets = [(via, path) for via in ("proxy", "hub") for path in ("/hub/api/users", "/hub/login")]
    for via, path in targets:  # once first, whole: the hub renders (and caches) the proxy's error page
        answer(post(where[via], path, BIG, BIG))
    before = hub.memory_info().rss
    uploads = {(via, path): post(where[via], path, BIG, BIG - 1) for via, path in targets}
    grown = hub.memory_info().rss - before  # while all four requests are still open
    assert grown < RSS_SLACK, f"the hub grew by {grown / 2**20:.0f} MiB while sent 4 x 50 MB bodies"
    outcomes = {target: (upload.sent, answer(upload)) for target, upload in uploads.items()}
    for (via, path), (sent, status) in outcomes.items():
        if via == "hub":
            # tornado refuses a body announced too long after the headers: 400, connection closed
            assert status in (400, None), f"{path} at the hub: {status}"
            assert sent < BIG - 1, f"{path} at the hub: the hub read the whole body"
        else:
            # configurable-http-proxy reads the body itself, finds the hub's connection reset: 503
            assert status in (400, 413, 503, None), f"{path} through the proxy: {status}"
    assert requests.get(f"{facility.hub_url}/hub/api", timeout=30).status_code == 200, "the hub keeps answering"


def test_requests_within_the_limit_are_served_and_one_byte_more_is_refused(facility, admin_token):
    s, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200 and r.url.startswith(facility.hub_url), "sign-in works"
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user=alice"], "note": "request limits"})
    assert r.status_code == 201, r.text
    auth = {"Authorization": f"token {r.json()['token']}"}
    broker = "/hub/api/casa/tokens/xcache"

    r = requests.post(facility.hub_url + broker, headers=auth, data=b"x" * LIMIT, timeout=60)
    assert r.status_code == 200 and r.json()["token"], f"a body of exactly {LIMIT} bytes is served: {r.text[:300]}"

    before = mints(facility)
    status = answer(post(ports(facility)["hub"], broker, LIMIT + 1, LIMIT + 1, headers=auth))
    assert status in (400, None), f"one byte more than the limit must be refused: {status}"
    assert mints(facility) == before, "nothing is minted for a refused request"
    assert requests.post(facility.hub_url + broker, headers=auth, timeout=30).status_code == 200
