"""Private files: the one atomic 0600 writer, and the token file naming contract.

Token files are ``<grant>.token`` in one directory (``$CASA_TOKEN_DIR``), on every spawner, in
every batch job and in the renewal agent; :func:`token_file_name` is the only place that spells it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

#: the suffix of a token file: ``<grant>.token``
TOKEN_SUFFIX = ".token"
#: the stem of a token file the renewal agent considers (the issuer's grant names are stricter)
TOKEN_FILE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def token_file_name(grant: str) -> str:
    """The file name of ``grant``'s token in a token directory."""
    return f"{grant}{TOKEN_SUFFIX}"


def grant_of_file(name: str) -> str | None:
    """The grant whose token file is called ``name``, or None for any other file."""
    if not name.endswith(TOKEN_SUFFIX):
        return None
    grant = name[: -len(TOKEN_SUFFIX)]
    return grant if TOKEN_FILE_STEM.fullmatch(grant) else None


def write_private(path: str | os.PathLike[str], content: bytes | str, *, sync_dir: bool = True) -> Path:
    """Replace ``path`` with ``content`` atomically, mode 0600.

    A temporary file in the same directory gets mode 0600 before any byte is written, is flushed
    and fsynced, then renamed over ``path``; with ``sync_dir`` the directory is fsynced too, so
    the new name survives a crash. A reader sees the old file or the new one, never half, and on
    any error the old file stays as it was.
    """
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path
