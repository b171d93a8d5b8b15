"""Key rotation for the facility issuer: which key signs, which are only published.

A key directory (e.g. a mounted Kubernetes Secret) holds PEM private keys and, once rotation is in
use, a manifest ``keyring.json``::

    {"signing": "key-2.pem",
     "next": {"key-3.pem": 1764000000},      # file -> when it was first published
     "retired": {"key-1.pem": 1763990000}}   # file -> when it stopped signing

The rules, applied by the issuer every time it (re)loads the directory:

* the ``signing`` key signs and is published;
* a ``next`` key is published but does not sign, so services have fetched it before it does;
* a ``retired`` key stays published until every token it signed has expired
  (``retired_at + longest grant lifetime + leeway``), then it is left out of the JWKS;
* without a manifest every ``*.pem`` is published and the first by name signs.

``add_next``, ``promote`` and ``prune`` change the directory in that order; ``casa-hub keys``
exposes them. Each write of the manifest is atomic.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casa_hub.common.files import write_private
from casa_hub.tokens.keys import KeyError_, SigningKey, load_key_dir, write_new_key

MANIFEST = "keyring.json"
#: how long a next key must have been published before ``promote`` lets it sign: longer than
#: the JWKS cache lifetime we advertise (300 s) plus a refresh of the services' key caches
DEFAULT_MIN_PUBLISHED = 600
#: tolerance added to a retired key's publication, for clocks that differ between services
RETIRE_LEEWAY = 300


@dataclass(frozen=True)
class KeyRing:
    """The keys of one directory, by role."""

    signing: SigningKey
    published: list[SigningKey]
    roles: dict[str, str] = field(default_factory=dict)  # kid -> signing | next | retired | published
    expired_files: list[str] = field(default_factory=list)  # retired keys no longer published
    #: when the next retired key stops being published (the ring must be reloaded then)
    changes_at: float = float("inf")

    def describe(self) -> list[dict[str, Any]]:
        return [{"kid": k.kid, "alg": k.alg, "role": self.roles.get(k.kid, "published"),
                 "file": Path(k.source).name} for k in self.published]


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when rotation is not in use."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KeyError_(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("signing"), str):
        raise KeyError_(f"{path} must be an object with a 'signing' key file name")
    for role in ("next", "retired"):
        entries = data.setdefault(role, {})
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) for k, v in entries.items()
        ):
            raise KeyError_(f"{path}: '{role}' must map key file names to unix times")
    return data


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (readers see the old or the new one, never half)."""
    write_private(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


def load_keyring(directory: str | os.PathLike[str], max_lifetime: int, now: float | None = None) -> KeyRing:
    """Load a key directory and apply the rotation rules (see the module docstring)."""
    directory = Path(directory)
    keys = {Path(k.source).name: k for k in load_key_dir(directory)}
    if not keys:
        raise KeyError_(f"no *.pem signing key in {directory}")
    manifest = read_manifest(directory)
    if manifest is None:
        ordered = list(keys.values())
        return KeyRing(ordered[0], ordered, {ordered[0].kid: "signing"})
    now = time.time() if now is None else now

    def key(name: str, role: str) -> SigningKey:
        if name not in keys:
            raise KeyError_(f"{directory / MANIFEST} names {role} key {name!r}, which is not in {directory}")
        return keys[name]

    signing = key(manifest["signing"], "signing")
    published, roles, expired, changes_at = [signing], {signing.kid: "signing"}, [], float("inf")
    for name in sorted(manifest["next"]):
        k = key(name, "next")
        published.append(k)
        roles[k.kid] = "next"
    for name, retired_at in sorted(manifest["retired"].items()):
        until = retired_at + max_lifetime + RETIRE_LEEWAY
        if now > until:
            expired.append(name)
            continue
        changes_at = min(changes_at, until)
        k = key(name, "retired")
        published.append(k)
        roles[k.kid] = "retired"
    listed = {manifest["signing"], *manifest["next"], *manifest["retired"]}
    unlisted = sorted(set(keys) - listed)
    if unlisted:
        raise KeyError_(
            f"{directory} holds keys not named in {MANIFEST}: {', '.join(unlisted)}; "
            "add them with `casa-hub keys add-next` or remove them"
        )
    return KeyRing(signing, published, roles, expired, changes_at)


def fingerprint(directory: str | os.PathLike[str]) -> tuple[Any, ...]:
    """Changes whenever a key file or the manifest is added, removed or replaced."""
    directory = Path(directory)
    entries = []
    for path in sorted([*directory.glob("*.pem"), directory / MANIFEST]):
        try:
            st = path.stat()  # follows symlinks, as a mounted Secret's files are
        except OSError:
            continue
        entries.append((path.name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(entries)


# ---- rotation steps (used by `casa-hub keys`) ----------------------------------------------------


def _manifest_or_initial(directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    if manifest is not None:
        return manifest
    names = sorted(p.name for p in directory.glob("*.pem"))
    if not names:
        raise KeyError_(f"no *.pem signing key in {directory}; create one with `casa-hub keys add-next`")
    # without a manifest the first key signs and the others are already published
    return {"signing": names[0], "next": {n: 0 for n in names[1:]}, "retired": {}}


def _new_key_name(directory: Path) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for i in range(1, 1000):
        name = f"signing-key-{stamp}-{i}.pem"
        if not (directory / name).exists():
            return name
    raise KeyError_(f"cannot find a free key file name in {directory}")


def add_next(directory: str | os.PathLike[str], alg: str = "ES256", now: float | None = None) -> SigningKey:
    """Create a new key and publish it as ``next`` (or as the signing key of an empty directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = int(time.time() if now is None else now)
    first = not list(directory.glob("*.pem"))
    key = write_new_key(directory / _new_key_name(directory), alg)
    name = Path(key.source).name
    if first:
        write_manifest(directory, {"signing": name, "next": {}, "retired": {}})
    else:
        manifest = _manifest_or_initial(directory)
        manifest["next"][name] = now
        write_manifest(directory, manifest)
    return key


def promote(
    directory: str | os.PathLike[str],
    min_published: int = DEFAULT_MIN_PUBLISHED,
    force: bool = False,
    now: float | None = None,
) -> tuple[str, str]:
    """Let the oldest ``next`` key sign and retire the current one. Returns (new, retired) file names.

    Refuses while the next key has been published for less than ``min_published`` seconds, since
    services that cached the old JWKS would reject its tokens; ``force`` overrides.
    """
    directory = Path(directory)
    now = int(time.time() if now is None else now)
    manifest = _manifest_or_initial(directory)
    if not manifest["next"]:
        raise KeyError_(f"{directory} has no next key; run `casa-hub keys add-next` first")
    name, published_at = min(manifest["next"].items(), key=lambda kv: (kv[1], kv[0]))
    waited = now - published_at
    if waited < min_published and not force:
        raise KeyError_(
            f"next key {name} has been published for {waited} s, less than {min_published} s; "
            "services may not have fetched it yet (wait, or use --force)"
        )
    old = manifest["signing"]
    del manifest["next"][name]
    manifest["signing"] = name
    manifest["retired"][old] = now
    write_manifest(directory, manifest)
    return name, old


def prune(directory: str | os.PathLike[str], max_lifetime: int, now: float | None = None) -> list[str]:
    """Delete retired keys whose last token has expired. Returns the deleted file names."""
    directory = Path(directory)
    now = time.time() if now is None else now
    manifest = read_manifest(directory)
    if manifest is None:
        return []
    gone = [n for n, t in manifest["retired"].items() if now > t + max_lifetime + RETIRE_LEEWAY]
    for name in gone:
        del manifest["retired"][name]
    write_manifest(directory, manifest)  # first stop naming them, then delete
    for name in gone:
        (directory / name).unlink(missing_ok=True)
    return sorted(gone)
