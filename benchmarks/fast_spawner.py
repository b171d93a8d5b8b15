"""A spawner that starts no process, so that a benchmark measures the hub and not the notebooks.

``FastSpawner.start`` computes the server's environment as a real spawner does, then returns the
address of a tiny HTTP server that runs inside the hub's own event loop on 127.0.0.1 and answers
every request with ``200 ok`` (and the hub's version header, as a JupyterHub single-user server
does). The hub still does all of its own work for the spawn: the API token, the server record, the
wait until the server answers, the proxy route. All servers share that one listener; the proxy
routes ``/user/<name>/`` to it like to any server.

This module imports nothing from casa_hub, so a hub that uses ``FastSpawner`` alone (the baseline)
loads no casa_hub code through it; ``benchmarks.casa_fast_spawner`` adds casa_hub's spawn steps.
State is not kept across hub restarts (a restarted hub finds the servers stopped).
"""

from __future__ import annotations

import asyncio

import jupyterhub
from jupyterhub.spawner import Spawner

_RESPONSE = (
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 3\r\n"
    f"X-JupyterHub-Version: {jupyterhub.__version__}\r\n"
    "Connection: close\r\n"
    "\r\n"
    "ok\n"
).encode("ascii")

_listener: asyncio.Server | None = None
_listener_lock: asyncio.Lock | None = None


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")  # the request's head; bodies are not expected
        writer.write(_RESPONSE)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def always_up_port() -> int:
    """The port of the process's always-up HTTP server on 127.0.0.1, started on first use."""
    global _listener, _listener_lock
    if _listener is None:
        if _listener_lock is None:
            _listener_lock = asyncio.Lock()
        async with _listener_lock:
            if _listener is None:
                _listener = await asyncio.start_server(_answer, "127.0.0.1", 0)
    return _listener.sockets[0].getsockname()[1]


class FastSpawner(Spawner):
    """Starts no process: the server is the hub's in-process always-up HTTP listener."""

    _running = False

    async def start(self) -> tuple[str, int]:
        self.get_env()  # what a real spawner computes for the process (API token, URLs, ...)
        port = await always_up_port()
        self._running = True
        return "127.0.0.1", port

    async def poll(self) -> int | None:
        return None if self._running else 0

    async def stop(self, now: bool = False) -> None:
        self._running = False
