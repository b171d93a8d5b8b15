"""Token files of the renewal agent: reading their times, replacing them atomically."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jwt

from casa_hub.common.files import grant_of_file, write_private


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
    """Replace ``path`` with ``token`` atomically (``casa_hub.common.files.write_private``): on any
    error the old file stays as it was."""
    write_private(path, token.encode("ascii"))


def grant_files(token_dir: Path) -> dict[str, Path]:
    """``{grant: path}`` for the ``<grant>.token`` files in ``token_dir`` (none if it is missing)."""
    try:
        entries = sorted(token_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for p in entries:
        grant = grant_of_file(p.name)
        if grant and p.is_file():
            found[grant] = p
    return found
