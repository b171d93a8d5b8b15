"""Copy the drop-ins of ``jupyterhub_config.d/`` into ``helm-values.yaml`` (``hub.extraFiles``).

Zero to JupyterHub mounts each ``hub.extraFiles`` entry into the hub pod; the chart's hub
configuration loads ``/usr/local/etc/jupyterhub/jupyterhub_config.d/*.py`` in sorted order. This
rewrites the lines between the ``# BEGIN casa drop-ins`` and ``# END casa drop-ins`` comments,
leaving the rest of the file (and its comments) as it is. ``tests/test_helm_values.py`` fails
while the copies differ from the repository's files.

    python deploy/sync_dropins.py [--values helm-values.yaml] [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOUNT_DIR = "/usr/local/etc/jupyterhub/jupyterhub_config.d"
BEGIN = "# BEGIN casa drop-ins"
END = "# END casa drop-ins"


def render_entries(dropin_dir: Path, indent: str) -> list[str]:
    """The ``hub.extraFiles`` entries for every ``*.py`` in ``dropin_dir``, as YAML lines."""
    lines: list[str] = []
    for path in sorted(dropin_dir.glob("*.py")):
        text = path.read_text()
        if not text.endswith("\n") or text.endswith("\n\n"):
            # the chart writes stringData back with exactly one final newline
            raise ValueError(f"{path} must end with exactly one newline")
        lines += [f"{indent}{path.stem}:", f"{indent}  mountPath: {MOUNT_DIR}/{path.name}",
                  f"{indent}  stringData: |"]
        lines += [f"{indent}    {line}" if line else "" for line in text[:-1].split("\n")]
    return lines


def synced(values_text: str, dropin_dir: Path) -> str:
    """``values_text`` with the block between the markers regenerated from ``dropin_dir``."""
    lines = values_text.split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith(BEGIN))
        end = next(i for i, line in enumerate(lines) if i > start and line.strip().startswith(END))
    except StopIteration:
        raise ValueError(f"the values file has no '{BEGIN}' ... '{END}' block under hub.extraFiles") from None
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    return "\n".join(lines[: start + 1] + render_entries(dropin_dir, indent) + lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--values", default=str(ROOT / "helm-values.yaml"), help="the values file to update")
    parser.add_argument("--dropins", default=str(ROOT / "jupyterhub_config.d"), help="the drop-in directory")
    parser.add_argument("--check", action="store_true", help="only report whether the copies differ (exit 1)")
    args = parser.parse_args(argv)
    path = Path(args.values)
    before = path.read_text()
    after = synced(before, Path(args.dropins))
    if after == before:
        print(f"{path}: the drop-in copies are up to date")
        return 0
    if args.check:
        print(f"{path}: the drop-in copies differ from {args.dropins}; run deploy/sync_dropins.py")
        return 1
    path.write_text(after)
    print(f"{path}: drop-in copies updated from {args.dropins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
