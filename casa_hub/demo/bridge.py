"""Byte forwarders that let XRootD, inside a loopback-only network namespace, reach the hub's issuer.

Three modes, each one process (started and stopped by ``casa_hub.demo.data_cache`` and the XRootD
test fixture):

- ``unix-to-tcp``: in the root namespace, accept on a unix socket and connect to the hub's TCP port.
  Unix sockets are files, so a process in another network namespace can connect to them.
- ``tls-to-unix``: inside the namespace, terminate TLS (a test CA's certificate for ``localhost``) on
  port 443 and forward the plain HTTP to the unix socket. The first line of each request (method and
  path, never headers) is logged, so tests can see what XRootD fetched.
- ``tcp-to-unix``: listen on 127.0.0.1 (and ::1) and forward the bytes to the unix socket: how clients in
  the root namespace reach a server inside the namespace (with ``unix-to-tcp`` running there).

Once listening, the process writes its ``--ready-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import sys
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close (the other direction may still carry an answer); on an
    error close the writer at once."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
            return
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    with contextlib.suppress(Exception):
        writer.close()


async def _join(client_r, client_w, upstream_r, upstream_w, first: bytes = b"") -> None:
    if first:
        upstream_w.write(first)
    try:
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
    finally:
        for w in (client_w, upstream_w):
            with contextlib.suppress(Exception):
                w.close()


async def unix_to_tcp(args: argparse.Namespace) -> None:
    host, port = args.tcp.rsplit(":", 1)

    async def handle(reader, writer):
        try:
            up_r, up_w = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await _join(reader, writer, up_r, up_w)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.unix)
    server = await asyncio.start_unix_server(handle, path=args.unix)
    os.chmod(args.unix, 0o600)
    await _serve(server, args.ready_file)


async def tcp_to_unix(args: argparse.Namespace) -> None:
    async def handle(reader, writer):
        try:
            up_r, up_w = await asyncio.open_unix_connection(args.unix)
        except OSError:
            writer.close()
            return
        await _join(reader, writer, up_r, up_w)

    await _serve_loopback(handle, args, None)


async def tls_to_unix(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)

    async def handle(reader, writer):
        try:
            first = await reader.readline()
        except (ConnectionError, ssl.SSLError):
            writer.close()
            return
        request_line = first.decode("latin-1").strip()
        print(f"request {request_line}", flush=True)
        try:
            up_r, up_w = await asyncio.open_unix_connection(args.unix)
        except OSError:
            writer.close()
            return
        await _join(reader, writer, up_r, up_w, first)

    await _serve_loopback(handle, args, ctx)


async def _serve_loopback(handle, args: argparse.Namespace, ctx: ssl.SSLContext | None) -> None:
    socks = []
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, args.port))
            s.listen(64)
            socks.append(s)
        except OSError:
            continue  # e.g. no IPv6 on this loopback
    if not socks:
        sys.exit(f"cannot listen on port {args.port}")
    servers = [await asyncio.start_server(handle, sock=s, ssl=ctx) for s in socks]
    await _serve(servers[0], args.ready_file, *servers[1:])


async def _serve(server, ready_file: str, *more) -> None:
    Path(ready_file).write_text(str(os.getpid()))
    await asyncio.gather(server.serve_forever(), *(s.serve_forever() for s in more))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["unix-to-tcp", "tls-to-unix", "tcp-to-unix"])
    parser.add_argument("--unix", required=True, help="the unix socket")
    parser.add_argument("--tcp", help="unix-to-tcp: HOST:PORT to connect to")
    parser.add_argument("--port", type=int, default=443, help="tls-to-unix, tcp-to-unix: port to listen on")
    parser.add_argument("--cert", help="tls-to-unix: PEM certificate chain")
    parser.add_argument("--key", help="tls-to-unix: PEM private key")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    run = {"unix-to-tcp": unix_to_tcp, "tls-to-unix": tls_to_unix, "tcp-to-unix": tcp_to_unix}[args.mode]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
