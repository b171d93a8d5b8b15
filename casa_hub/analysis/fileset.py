"""Data sets by name: the facility's fileset file, resolved to URLs a notebook and its workers read.

The fileset file (JSON, or YAML for ``.yaml``/``.yml``) maps a data set name to its files, as
paths in the storage namespace, or as ``{"files": [...], "treename": "Events"}``::

    {"ttbar": ["/store/data/ttbar/nano_000.root", "/store/data/ttbar/nano_001.root"]}

Where it is: ``Filesets.path``, else ``$CASA_FILESET``, else ``$CASA_CONFIG_DIR/fileset.json`` (the
directory of configuration files the facility gives each notebook). A namespace path is read
through the data cache when one is configured (``$CASA_XCACHE_URL``, e.g. ``root://cache:1094``
gives ``root://cache:1094//store/data/...``), else from a local directory holding the namespace
(``$CASA_DATA_DIR``, by default the fileset file's directory) as a ``file://`` URL. An entry
that already is a URL (``root://...``, ``https://...``) is used as it is.

In a notebook::

    from casa_hub.analysis import fileset
    fileset(["ttbar"])   # {"ttbar": {"files": {"root://cache:1094//store/data/ttbar/nano_000.root": "Events"}}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from traitlets import Unicode, default
from traitlets.config import Configurable

FILESET_ENV = "CASA_FILESET"
CACHE_ENV = "CASA_XCACHE_URL"
DATA_DIR_ENV = "CASA_DATA_DIR"
CONFIG_DIR_ENV = "CASA_CONFIG_DIR"
DEFAULT_FILE_NAME = "fileset.json"
DEFAULT_TREE = "Events"


class FilesetError(Exception):
    """The fileset file is missing or wrong, or names no such data set or file."""


class Filesets(Configurable):
    """Reads the fileset file and resolves data set names to coffea filesets."""

    path = Unicode(config=True, help=f"""The fileset file. Default: ``${FILESET_ENV}``, else
        ``${CONFIG_DIR_ENV}/{DEFAULT_FILE_NAME}``.""")
    cache_url = Unicode(config=True, help=f"""The data cache that namespace paths are read
        through, e.g. ``root://xcache.example.org:1094``. Default: ``${CACHE_ENV}``; empty: read
        from ``data_dir``.""")
    data_dir = Unicode(config=True, help=f"""The local directory holding the storage namespace
        (``/store/...`` is ``<data_dir>/store/...``), used when no cache is configured. Default:
        ``${DATA_DIR_ENV}``, else the fileset file's directory.""")
    treename = Unicode(DEFAULT_TREE, config=True, help="The tree of a data set that names none.")

    @default("path")
    def _default_path(self) -> str:
        if os.environ.get(FILESET_ENV):
            return os.environ[FILESET_ENV]
        if os.environ.get(CONFIG_DIR_ENV):
            return str(Path(os.environ[CONFIG_DIR_ENV]) / DEFAULT_FILE_NAME)
        return ""

    @default("cache_url")
    def _default_cache_url(self) -> str:
        return os.environ.get(CACHE_ENV, "")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get(DATA_DIR_ENV, "")

    # ---- the file ---------------------------------------------------------------------------

    def load(self) -> dict[str, dict[str, Any]]:
        """``{name: {"files": [path or URL, ...], "treename": str}}`` as the file says."""
        if not self.path:
            raise FilesetError(f"no fileset file: set ${FILESET_ENV} to its path (or ${CONFIG_DIR_ENV} "
                               f"to a directory holding {DEFAULT_FILE_NAME})")
        path = Path(self.path).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise FilesetError(f"fileset file {path} cannot be read ({e.strerror or e}); "
                               f"{self._where()}") from None
        try:
            data = _parse(text, path)
        except ValueError as e:
            raise FilesetError(f"fileset file {path} is not valid: {e}") from None
        return self._checked(data, path)

    def _where(self) -> str:
        if os.environ.get(FILESET_ENV):
            return f"${FILESET_ENV}={os.environ[FILESET_ENV]}"
        if os.environ.get(CONFIG_DIR_ENV):
            return f"${FILESET_ENV} is unset: the default is ${CONFIG_DIR_ENV}/{DEFAULT_FILE_NAME}"
        return f"${FILESET_ENV} is unset"

    def _checked(self, data: Any, path: Path) -> dict[str, dict[str, Any]]:
        if not isinstance(data, dict):
            raise FilesetError(f"fileset file {path}: expected a mapping of data set name to files")
        checked: dict[str, dict[str, Any]] = {}
        for name, entry in data.items():
            spec = {"files": entry} if isinstance(entry, list) else entry
            files = spec.get("files") if isinstance(spec, dict) else None
            tree = spec.get("treename", self.treename) if isinstance(spec, dict) else None
            if not isinstance(name, str) or not isinstance(files, list) or not isinstance(tree, str) \
                    or not all(isinstance(f, str) and f for f in files):
                raise FilesetError(f"fileset file {path}: data set {name!r} must be a list of file "
                                   f"paths or {{'files': [...], 'treename': ...}}")
            checked[name] = {"files": files, "treename": tree}
        return checked

    # ---- names to URLs -------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The data sets the fileset file lists."""
        return sorted(self.load())

    def fileset(self, names: str | Iterable[str]) -> dict[str, dict[str, Any]]:
        """coffea's fileset for ``names``: ``{name: {"files": {url: treename}}}``."""
        wanted = [names] if isinstance(names, str) else list(names)
        known = self.load()
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise FilesetError(f"unknown data set {', '.join(map(repr, unknown))}; the fileset file "
                               f"{self.path} lists: {', '.join(sorted(known)) or '(none)'}")
        return {n: {"files": {self.url(f, dataset=n): known[n]["treename"] for f in known[n]["files"]}}
                for n in wanted}

    def url(self, path: str, *, dataset: str = "") -> str:
        """The URL to read a file of the fileset from."""
        if "://" in path:
            return path
        if not path.startswith("/") or ".." in path.split("/"):
            raise FilesetError(f"data set {dataset!r}: {path!r} is not an absolute namespace path "
                               "such as /store/data/...")
        if self.cache_url:
            return f"{self.cache_url.rstrip('/')}/{path}"
        local = self._local_root() / path.lstrip("/")
        if not local.is_file():
            raise FilesetError(f"data set {dataset!r}: {local} does not exist (no data cache "
                               f"configured: ${CACHE_ENV} is unset, so files are read from "
                               f"{self._local_root()}; set ${CACHE_ENV} or ${DATA_DIR_ENV})")
        return local.resolve().as_uri()

    def _local_root(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return Path(self.path).expanduser().resolve().parent


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(str(e)) from None
    return json.loads(text)


def fileset(names: str | Iterable[str], **settings: Any) -> dict[str, dict[str, Any]]:
    """coffea's fileset (``{name: {"files": {url: "Events"}}}``) for the named data sets.

    ``settings`` override :class:`Filesets`' (``path``, ``cache_url``, ``data_dir``), which
    otherwise come from the environment the facility sets.
    """
    return Filesets(**settings).fileset(names)


def write_fileset(path: str | os.PathLike[str], datasets: dict[str, list[str]]) -> Path:
    """Add ``{name: [namespace path, ...]}`` to the fileset file ``path`` (created if missing)."""
    target = Path(path)
    current = json.loads(target.read_text()) if target.is_file() else {}
    current.update({name: list(files) for name, files in datasets.items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return target
