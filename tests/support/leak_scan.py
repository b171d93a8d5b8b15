"""The leak scan: after the test session, no facility token may be found in logs or artifacts.

A pytest plugin (``tests/conftest.py`` imports its hooks) that, when the session ends, scans

- every log the run's processes wrote under the session's base temporary directory (the hub and
  provider logs of every ``DemoFacility``, XRootD, Slurm, MLflow, ...: ``*.log``, ``*.out``,
  ``*.err`` and every file in a ``log``/``logs`` directory),
- the text files in ``test-artifacts/`` (``*.json``, ``*.html``, ``*.txt``, ``*.log``, ``*.xml``,
  ``*.yaml``): page HTML and axe reports of the browser tests, the Kubernetes manifests the
  Kubernetes tests write (``dump_manifests``),

for JWT-shaped strings (three base64url segments, also inside standard base64 such as a Secret's
``data``) whose header and payload decode to a facility token: ``iss`` ending in
``/hub/casa-issuer`` or a ``wlcg.ver`` claim. Every finding names the file and line and a
fingerprint (SHA-256 prefix, ``jti``), never the token. Any finding fails the run: the session's
exit status becomes 1 and the terminal summary says where.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ISSUER_SUFFIX = "/hub/casa-issuer"
LOG_SUFFIXES = {".log", ".out", ".err"}
LOG_DIRS = {"log", "logs"}
ARTIFACT_SUFFIXES = {".json", ".html", ".htm", ".txt", ".log", ".xml", ".yaml", ".yml"}
MAX_FILE_BYTES = 200 * 2**20

# base64url of a JSON object starts with "e" + one of w-z ('{' then '"', '\n', ...)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])(e[w-z][A-Za-z0-9_-]{6,})\.([A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]*)")
# standard base64 of "eyJ" / "ewog" ...: a JWT inside a Kubernetes Secret's data, a header dump, ...
_WRAPPED = re.compile(r"(?<![A-Za-z0-9+/])(ZX[l-o][A-Za-z0-9+/]{40,}={0,2})")


@dataclass(frozen=True)
class Finding:
    """One facility token in one file: where, and a fingerprint (never the token)."""

    path: Path
    line: int
    fingerprint: str
    jti: str
    how: str  # "raw" or "base64"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: facility token sha256:{self.fingerprint} jti={self.jti or '-'} ({self.how})"


def _b64json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None


def facility_claims(token: str) -> dict | None:
    """The payload of ``token`` if it is shaped like a facility token, else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header, payload = _b64json(parts[0]), _b64json(parts[1])
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None
    iss = payload.get("iss")
    if (isinstance(iss, str) and iss.rstrip("/").endswith(ISSUER_SUFFIX)) or "wlcg.ver" in payload:
        return payload
    return None


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def find_in_text(text: str) -> Iterator[tuple[int, str, str, str]]:
    """``(line, fingerprint, jti, how)`` for each facility token in ``text``."""
    for number, line in enumerate(text.splitlines(), 1):
        candidates = [(m.group(0), "raw") for m in _JWT.finditer(line)]
        for m in _WRAPPED.finditer(line):
            try:
                decoded = base64.b64decode(m.group(1), validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                continue
            candidates += [(j.group(0), "base64") for j in _JWT.finditer(decoded)]
        for token, how in candidates:
            claims = facility_claims(token)
            if claims is not None:
                yield number, fingerprint(token), str(claims.get("jti", "")), how


def scan_files(paths: Iterable[Path]) -> list[Finding]:
    findings = []
    for path in paths:
        try:
            if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        findings += [Finding(path, line, fp, jti, how) for line, fp, jti, how in find_in_text(text)]
    return findings


def log_files(root: Path) -> Iterator[Path]:
    """The logs under ``root``: ``*.log``/``*.out``/``*.err`` and files in ``log``/``logs`` dirs."""
    if not root.is_dir():
        return
    for dirpath, _, names in os.walk(root, followlinks=False):
        in_log_dir = Path(dirpath).name in LOG_DIRS
        for name in names:
            if in_log_dir or Path(name).suffix in LOG_SUFFIXES:
                yield Path(dirpath) / name


def artifact_files(root: Path) -> Iterator[Path]:
    """The text files in the artifacts directory (screenshots are skipped)."""
    if root.is_dir():
        yield from (p for p in sorted(root.rglob("*")) if p.suffix.lower() in ARTIFACT_SUFFIXES)


def scan_run(basetemp: Path | None, artifacts: Path) -> list[Finding]:
    """Findings in the logs of one test session and in the artifacts directory."""
    paths = list(log_files(basetemp)) if basetemp is not None else []
    return scan_files([*paths, *artifact_files(artifacts)])


# ---- writing manifests for the scan ---------------------------------------------------------------

def redact_secret(manifest: dict) -> dict:
    """A copy of a Kubernetes manifest whose Secret ``data``/``stringData`` values are fingerprints."""
    out = json.loads(json.dumps(manifest))
    if out.get("kind") == "Secret":
        for field in ("data", "stringData"):
            for key, value in (out.get(field) or {}).items():
                out[field][key] = f"<redacted sha256:{fingerprint(str(value))}>"
    return out


def dump_manifests(directory: Path, name: str, manifests: list[dict]) -> Path:
    """Write generated manifests (Secrets redacted) where the leak scan reads them."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps([redact_secret(m) for m in manifests], indent=1, default=str))
    return path


# ---- the pytest plugin ----------------------------------------------------------------------------

def _artifacts_dir() -> Path:
    default = Path(__file__).parents[2] / "test-artifacts"
    return Path(os.environ.get("CASA_TEST_ARTIFACTS", default))


def _basetemp(config: pytest.Config) -> Path | None:
    factory = getattr(config, "_tmp_path_factory", None)
    try:
        return factory.getbasetemp() if factory is not None else None
    except OSError:
        return None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Scan once every fixture has stopped (trylast: after pytest's runner tore down what a stopped
    run left, so the last log lines are written); a finding makes the run's exit status 1."""
    config = session.config
    if config.option.collectonly or exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    if hasattr(config, "workerinput"):  # a worker of a parallel run: the controller scans every worker's files
        return
    basetemp = _basetemp(config)
    findings = scan_run(basetemp, _artifacts_dir())
    config.stash[_FINDINGS] = (findings, basetemp)
    if findings:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    findings, basetemp = config.stash.get(_FINDINGS, (None, None))
    if findings is None:
        return
    if not findings:
        terminalreporter.write_line(f"leak scan: no facility token in the logs under {basetemp} or in "
                                    f"{_artifacts_dir()}")
        return
    terminalreporter.section("leak scan: FACILITY TOKENS FOUND", sep="=", red=True, bold=True)
    terminalreporter.write_line(f"{len(findings)} facility token(s) in logs or test artifacts; the run fails. "
                                "Find what wrote them (values are not shown):")
    for finding in findings[:50]:
        terminalreporter.write_line(f"  {finding}", red=True)
    if len(findings) > 50:
        terminalreporter.write_line(f"  ... and {len(findings) - 50} more")


_FINDINGS = pytest.StashKey[tuple]()
