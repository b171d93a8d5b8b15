"""Stand-in for ``condor_submit``, ``condor_rm`` and ``condor_q`` in tests/test_dask_htcondor.py.

HTCondor's daemons cannot run here, so the backend's commands run this script instead (through
small wrappers named like the real tools, see ``install_recorder``). It records exactly what it was
handed -- arguments, environment, stdin or submit file -- and the files the command would read at that moment:
the token file named by ``_CONDOR_SCITOKENS_FILE`` and, for ``condor_submit -spool``, the
executable and every ``transfer_input_files`` entry (what the schedd would receive). It answers
like the real tools: ``condor_submit`` prints ``1 job(s) submitted to cluster N.`` (``-terse``: ``N.0 - N.0``), ``condor_q -af:j JobStatus``
prints ``<id> 1`` (idle) for each job id given, ``condor_rm`` confirms the removal.

Records go to a JSON-lines file in a private test directory (they hold token values, for the test
to verify; the directory is deleted with the test's temporary directory). Contains no tests.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path


def describe_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        return {"exists": False}
    st = p.stat()
    return {"exists": True, "mode": oct(stat.S_IMODE(st.st_mode)), "content": p.read_text(errors="replace")}


def submitted_files(description: str) -> dict[str, dict]:
    files = {}
    for key in ("executable", "transfer_input_files"):
        m = re.search(rf"^{key}\s*=\s*(.*)$", description, re.MULTILINE | re.IGNORECASE)
        if m:
            for path in (p.strip() for p in m.group(1).split(",")):
                if path:
                    files[path] = describe_file(path)
    return files


def next_cluster_id(counter: Path) -> int:
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n


def initial_environment() -> dict[str, str]:
    """The environment this process was started with (Python itself may add LC_CTYPE)."""
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def main(log: Path, tool: str, args: list[str]) -> None:
    stdin = sys.stdin.read() if tool == "condor_submit" else ""
    record = {"tool": tool, "argv": args, "env": initial_environment(), "stdin": stdin, "files": {}}
    if os.environ.get("_CONDOR_SCITOKENS_FILE"):
        record["files"]["scitokens_file"] = describe_file(os.environ["_CONDOR_SCITOKENS_FILE"])
    if tool == "condor_submit":
        if not stdin and args and Path(args[-1]).is_file():  # a submit file instead of stdin
            record["description"] = Path(args[-1]).read_text()
        record["files"].update(submitted_files(stdin or record.get("description", "")))
        n = next_cluster_id(log.with_suffix(".counter"))
        print(f"{n}.0 - {n}.0" if "-terse" in args else f"Submitting job(s).\n1 job(s) submitted to cluster {n}.")
    elif tool == "condor_q":
        for job_id in (a for a in args if re.fullmatch(r"\d+\.\d+", a)):
            print(f"{job_id} 1")
    elif tool == "condor_rm":
        print(f"All jobs matching {' '.join(args[-1:])} have been marked for removal.")
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")


def install_recorder(bin_dir: Path, log: Path) -> dict[str, str]:
    """Wrappers ``condor_submit``, ``condor_rm``, ``condor_q`` in ``bin_dir`` that record to ``log``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tool in ("condor_submit", "condor_rm", "condor_q"):
        wrapper = bin_dir / tool
        wrapper.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                           f"from {Path(__file__).stem} import main\n"
                           f"main(__import__('pathlib').Path({str(log)!r}), {tool!r}, sys.argv[1:])\n")
        wrapper.chmod(0o755)
        paths[tool] = str(wrapper)
    return paths


def read_records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
