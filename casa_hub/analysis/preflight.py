"""Before an analysis starts: can the data be read with the user's token? A clear error now instead of
an XRootD trace from a worker minutes later.

``check_access(fileset)`` (``casa_hub.analysis.run`` calls it for remote files):

1. every data server the fileset names (``root://``, ``https://``) accepts a connection within
   ``timeout`` seconds, else ``DataAccessError`` naming the cache: the analysis does not start, the
   notebook and its Dask cluster are untouched;
2. with the XRootD bindings, the first file of each data set is looked up (``stat``) with the user's
   token (``$BEARER_TOKEN_FILE``): a refusal says what the token allows ("your token allows
   /store/user/alice"), a missing file says so.

Paths in scopes are relative to the storage's base path (``$CASA_STORAGE_BASE_PATH``, default ``/store``,
as ``casa-hub site-config xrootd --base-path`` configures the storage). Token values are never put in a
message.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

BASE_PATH_ENV = "CASA_STORAGE_BASE_PATH"
DEFAULT_BASE_PATH = "/store"
REMOTE_SCHEMES = {"root": 1094, "roots": 1094, "https": 443, "davs": 443}
#: XRootD error numbers (XProtocol.hh): not authorized, not found
KXR_NOT_AUTHORIZED, KXR_NOT_FOUND = 3010, 3011


class DataAccessError(RuntimeError):
    """The data cannot be read; the message says which server or file, why, and what to do."""


def _urls(fileset: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for name, spec in fileset.items():
        files = spec.get("files", []) if isinstance(spec, dict) else spec
        yield name, list(files.keys() if isinstance(files, dict) else files)


def remote_servers(urls: Iterable[str]) -> dict[tuple[str, str, int], str]:
    """``{(scheme, host, port): first url}`` for the remote URLs among ``urls``."""
    servers: dict[tuple[str, str, int], str] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in REMOTE_SCHEMES and parts.hostname:
            key = (parts.scheme, parts.hostname, parts.port or REMOTE_SCHEMES[parts.scheme])
            servers.setdefault(key, url)
    return servers


def token_read_paths(token_file: str | None = None, base_path: str | None = None) -> list[str] | None:
    """The storage paths the token in ``token_file`` (default ``$BEARER_TOKEN_FILE``) may read, or None
    when there is no readable token. Its claims are only read, not verified (the storage verifies)."""
    token_file = token_file or os.environ.get("BEARER_TOKEN_FILE", "")
    base = (base_path if base_path is not None else os.environ.get(BASE_PATH_ENV, DEFAULT_BASE_PATH)).rstrip("/")
    try:
        with open(token_file) as f:
            payload = f.read().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return None
    scopes = str(claims.get("scope", "")).split() if isinstance(claims, dict) else []
    return [base + s.split(":", 1)[1] for s in scopes if s.startswith("storage.read:")]


def _allowed(token_file: str | None) -> str:
    paths = token_read_paths(token_file)
    if paths is None:
        return "there is no readable storage token ($BEARER_TOKEN_FILE)"
    return f"your token allows {', '.join(paths)}" if paths else "your token allows reading nothing"


def check_servers(urls: Iterable[str], timeout: float = 5.0) -> None:
    """DataAccessError unless every remote server among ``urls`` accepts a TCP connection."""
    for (scheme, host, port), _ in remote_servers(urls).items():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
            raise DataAccessError(
                f"the data cache {scheme}://{host}:{port} is not reachable ({reason}): the analysis did not "
                f"start. Your notebook and your Dask cluster keep running; try again in a few minutes, and "
                f"tell the facility's admins if it stays down."
            ) from None


def check_files(fileset: dict[str, Any], timeout: float = 10.0, token_file: str | None = None) -> None:
    """With the XRootD bindings: the first ``root://`` file of each data set exists and the token may
    read it (DataAccessError otherwise). Without them: nothing to check here."""
    try:
        from XRootD import client as xrd
    except ImportError:
        return
    for name, urls in _urls(fileset):
        url = next((u for u in urls if urlsplit(u).scheme in ("root", "roots")), None)
        if url is None:
            continue
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("//") else parts.path
        status, _ = xrd.FileSystem(f"{parts.scheme}://{parts.netloc}").stat(path, timeout=int(timeout))
        if status.ok:
            continue
        if status.errno == KXR_NOT_AUTHORIZED or "auth" in status.message.lower() \
                or "permission" in status.message.lower():
            raise DataAccessError(f"data set {name!r}: the data cache refused to read {path}: "
                                  f"{_allowed(token_file)}")
        if status.errno == KXR_NOT_FOUND:
            raise DataAccessError(f"data set {name!r}: {path} does not exist at {parts.scheme}://{parts.netloc}")
        raise DataAccessError(f"data set {name!r}: {path} cannot be read at {parts.scheme}://{parts.netloc}: "
                              f"{status.message.strip()}")


def check_access(fileset: dict[str, Any], *, timeout: float = 5.0, token_file: str | None = None) -> None:
    """Both checks above, servers first (see the module's docstring)."""
    check_servers((u for _, urls in _urls(fileset) for u in urls), timeout)
    check_files(fileset, timeout=max(timeout, 10.0), token_file=token_file)
