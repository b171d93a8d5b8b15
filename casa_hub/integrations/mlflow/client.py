"""The MLflow client side: the user's facility token as ``Authorization: Bearer``, read per request.

MLflow loads ``CasaTokenHeaderProvider`` through the ``mlflow.request_header_provider`` entry point
and asks it for headers before every HTTP request. The provider reads the token file each time, so a
token the renewal agent replaced (atomically) is sent with the very next request, and no token value
is ever kept in the process environment.

The token is sent only when all of these hold, so MLflow works as usual anywhere else:

- a token file exists: ``$CASA_MLFLOW_TOKEN_FILE``, else ``$CASA_TOKEN_DIR/mlflow.token``;
- ``$CASA_MLFLOW_TRACKING_URI`` names the facility's MLflow server, and the tracking URI MLflow
  uses now is that server (same scheme, host and port, and a path below it): a notebook that points
  MLflow at another server does not hand it the facility token.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from casa_hub.common.files import token_file_name

try:
    from mlflow.tracking.request_header.abstract_request_header_provider import (
        RequestHeaderProvider,
    )
except ImportError:  # the helpers below stay usable without MLflow
    RequestHeaderProvider = object  # type: ignore[misc,assignment]

TOKEN_FILE_ENV = "CASA_MLFLOW_TOKEN_FILE"
TRACKING_URI_ENV = "CASA_MLFLOW_TRACKING_URI"
TOKEN_DIR_ENV = "CASA_TOKEN_DIR"
DEFAULT_GRANT = "mlflow"
#: larger token files are not sent (facility tokens are a few hundred bytes)
MAX_TOKEN_BYTES = 16 * 1024
# a JWT: three base64url parts; anything else (spaces, line breaks) never goes into a header
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def token_file(environ: dict[str, str] | None = None) -> Path | None:
    """Where the user's MLflow token is, from the environment; None when casa_hub set nothing."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_FILE_ENV):
        return Path(env[TOKEN_FILE_ENV])
    if env.get(TOKEN_DIR_ENV):
        return Path(env[TOKEN_DIR_ENV]) / token_file_name(DEFAULT_GRANT)
    return None


def read_token(path: Path) -> str | None:
    """The token in ``path`` as it is now, or None if the file is missing, empty or not a JWT."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_TOKEN_BYTES:
        return None
    token = raw.decode("ascii", errors="replace").strip()
    return token if _TOKEN.fullmatch(token) else None


def _location(uri: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(uri)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port, parts.path.rstrip("/") + "/"


def is_facility_server(tracking_uri: str, facility_uri: str) -> bool:
    """Whether ``tracking_uri`` is the facility's MLflow server (or a path below it)."""
    here, facility = _location(tracking_uri), _location(facility_uri)
    if here is None or facility is None:
        return False
    return here[:3] == facility[:3] and here[3].startswith(facility[3])


def _current_tracking_uri() -> str | None:
    try:
        from mlflow.tracking import get_tracking_uri
    except ImportError:
        return None
    return get_tracking_uri()


class CasaTokenHeaderProvider(RequestHeaderProvider):
    """Adds ``Authorization: Bearer <facility token>`` to requests to the facility's MLflow server."""

    def in_context(self) -> bool:
        facility = os.environ.get(TRACKING_URI_ENV)
        path = token_file()
        if not facility or path is None or not path.is_file():
            return False
        current = _current_tracking_uri()
        return current is not None and is_facility_server(current, facility)

    def request_headers(self) -> dict[str, str]:
        path = token_file()
        token = read_token(path) if path is not None else None
        return {"Authorization": f"Bearer {token}"} if token else {}
