"""Token files of the renewal agent: reading their times, replacing them atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jwt

TOKEN_SUFFIX = ".token"
GRANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TokenTimes:
    """What the agent reads from a token file to schedule its renewal (never the value)."""

    iat: float
    exp: float
    jti: str | None
    fingerprint: str  # sha256 of the file, to notice when someone else replaced it

    @property
    def readable(self) -> bool:
        return self.jti is not None or self.exp > 0


def token_times(token: str) -> tuple[float, float, str | None]:
    """(iat, exp, jti) of a JWT, unverified; (0, 0, None) if it is not a JWT with iat and exp."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        iat, exp = float(claims["iat"]), float(claims["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return 0.0, 0.0, None
    return iat, exp, str(claims.get("jti", ""))


def read_token_times(path: Path) -> TokenTimes | None:
    """The token file's times, or None when the file is gone. An unreadable token is due now."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    iat, exp, jti = token_times(raw.decode("ascii", errors="replace").strip())
    return TokenTimes(iat, exp, jti, hashlib.sha256(raw).hexdigest())


def write_token_file(path: Path, token: str) -> None:
    """Replace ``path`` with ``token`` atomically: 0600 temp file in the same directory, fsync,
    ``os.replace``, then fsync the directory. On any error the old file stays as it was."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(token.encode("ascii"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def grant_files(token_dir: Path) -> dict[str, Path]:
    """``{grant: path}`` for the ``<grant>.token`` files in ``token_dir`` (none if it is missing)."""
    try:
        entries = sorted(token_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for p in entries:
        grant = p.name[: -len(TOKEN_SUFFIX)]
        if p.name.endswith(TOKEN_SUFFIX) and GRANT_NAME.match(grant) and p.is_file():
            found[grant] = p
    return found
