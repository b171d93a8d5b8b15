"""``CasaHubServer.max_body_size`` (casa_hub/hub_server.py): the site file's ``hub`` section sets it,
a hub process creates its tornado server with it, other processes keep tornado's defaults.

The real hub refusing 50 MB bodies without growing is tests/e2e/test_request_limits.py.
"""

from __future__ import annotations

import asyncio

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from traitlets.config import Config

from casa_hub import hub_server
from casa_hub.site_file import SiteSettingsError, apply


@pytest.fixture
def tornado_defaults():
    """tornado's HTTPServer defaults as they were, restored after the test."""
    saved = HTTPServer._save_configuration()
    yield saved
    HTTPServer._restore_configuration(saved)


class Echo(RequestHandler):
    def post(self) -> None:
        self.write({"length": len(self.request.body)})


async def post_status(port: int, length: int) -> int | None:
    """The status of a POST with a body of ``length`` bytes; None when the server closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + b"x" * length)
    try:
        await writer.drain()
        first = await reader.readline()
    except ConnectionError:
        return None
    finally:
        writer.close()
    return int(first.split()[1]) if first.startswith(b"HTTP/1.1 ") else None


def test_the_site_files_hub_section_sets_the_limit_and_leaves_other_processes_alone(tornado_defaults):
    c = Config()
    apply(c, "auth", {"hub": {"max_body_size": 2**20}})
    assert c.CasaHubServer.max_body_size == 2**20
    assert not hub_server.in_hub_process()
    assert HTTPServer._save_configuration() == tornado_defaults, "only a hub process changes tornado's defaults"


@pytest.mark.parametrize("value", [1000, -1, "4M"])
def test_a_bad_limit_stops_the_hub_naming_it(value):
    with pytest.raises(SiteSettingsError, match=r"^casa\.hub\.max_body_size"):
        apply(Config(), "auth", {"hub": {"max_body_size": value}})


async def test_in_a_hub_process_the_server_is_created_with_the_limit(tornado_defaults, monkeypatch):
    monkeypatch.setattr(hub_server, "in_hub_process", lambda: True)
    limit = 100_000
    assert hub_server.limit_request_bodies(Config({"CasaHubServer": {"max_body_size": limit}})) == limit
    server = HTTPServer(Application([("/", Echo)]))  # as JupyterHub.start() creates it: no max_body_size
    [sock] = bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    try:
        port = sock.getsockname()[1]
        assert await post_status(port, limit) == 200
        assert await post_status(port, limit + 1) in (400, None)
    finally:
        server.stop()
