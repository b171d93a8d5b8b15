"""Derive a larger NanoAOD data set from the shipped sample, for throughput runs.

Each of N output files holds M events drawn with replacement from the sample's 200 events
(``numpy.random.default_rng([seed, file index])``: the same seed gives the same files, and file
k's events do not depend on how many files are written). Events are copied whole: every branch
listed in :data:`COLLECTIONS`, :data:`FLAT_PREFIXES` and :data:`EVENT_BRANCHES` keeps its type and
values (``event`` numbers included, so resampled events repeat them). The output is a TTree
``Events`` written with uproot, which coffea's ``NanoEventsFactory`` reads with ``NanoAODSchema``.

Command line::

    python -m casa_hub.analysis.generate --files 4 --events 100000 --out /data/store/data/ttbar --seed 1 \\
        [--fileset fileset.json --dataset ttbar --namespace /store/data/ttbar]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casa_hub.analysis.fileset import write_fileset
from casa_hub.analysis.sample import SAMPLE_FILE, TREE

#: jagged collections written whole: ``n<Name>`` counter and every ``<Name>_*`` branch
COLLECTIONS = ("Jet", "Muon", "Electron")
#: flat (one value per event) branch families written whole
FLAT_PREFIXES = ("MET_",)
#: event-level branches written when the source has them
EVENT_BRANCHES = ("run", "luminosityBlock", "event", "genWeight", "PV_npvs", "PV_npvsGood",
                  "fixedGridRhoFastjetAll")
#: events written per basket (bounds memory for large M)
CHUNK_EVENTS = 100_000


def read_source(source: str | Path = SAMPLE_FILE) -> dict[str, Any]:
    """The source's events as ``{name: awkward array}``: one record array per collection."""
    import awkward as ak
    import uproot

    with uproot.open(source) as f:
        tree = f[TREE]
        keys = set(tree.keys())
        wanted = [k for k in tree.keys() if k.startswith(tuple(f"{c}_" for c in COLLECTIONS) + FLAT_PREFIXES)]
        wanted += [k for k in EVENT_BRANCHES if k in keys]
        arrays = tree.arrays(wanted)
    columns: dict[str, Any] = {}
    for name in COLLECTIONS:
        fields = {k[len(name) + 1:]: arrays[k] for k in arrays.fields if k.startswith(f"{name}_")}
        if fields:
            columns[name] = ak.zip(fields)
    for k in arrays.fields:
        if not k.startswith(tuple(f"{c}_" for c in COLLECTIONS)):
            columns[k] = arrays[k]
    return columns


def branch_names(columns: dict[str, Any]) -> list[str]:
    """The TTree branches :func:`generate` writes for ``columns`` (counters included)."""
    names: list[str] = []
    for key, array in columns.items():
        if key in COLLECTIONS:
            names += [f"n{key}"] + [f"{key}_{field}" for field in array.fields]
        else:
            names.append(key)
    return names


def generate(out_dir: str | Path, files: int, events: int, *, seed: int = 0,
             source: str | Path = SAMPLE_FILE, prefix: str = "nano",
             progress: Callable[[str], None] | None = print) -> list[Path]:
    """Write ``files`` files of ``events`` resampled events to ``out_dir``; their paths in order."""
    import numpy as np
    import uproot

    if files < 1 or events < 1:
        raise ValueError(f"need at least 1 file and 1 event (got {files} files, {events} events)")
    columns = read_source(source)
    available = len(next(iter(columns.values())))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    start = time.monotonic()
    for index in range(files):
        rng = np.random.default_rng([seed, index])
        picks = rng.integers(0, available, size=events)
        path = out / f"{prefix}_{index:03d}.root"
        with uproot.recreate(path) as f:
            tree = f.mktree(TREE, {k: v.type for k, v in columns.items()})
            for begin in range(0, events, CHUNK_EVENTS):
                chosen = picks[begin:begin + CHUNK_EVENTS]
                tree.extend({k: v[chosen] for k, v in columns.items()})
        written.append(path)
        if progress is not None:
            progress(f"[{index + 1}/{files}] {path}: {events} events "
                     f"({time.monotonic() - start:.1f} s so far)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m casa_hub.analysis.generate", description=(
        "Write N files of M events resampled from casa_hub's sample NanoAOD file."))
    parser.add_argument("--files", type=int, required=True, help="number of files (N)")
    parser.add_argument("--events", type=int, required=True, help="events per file (M)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--source", default=str(SAMPLE_FILE), help="NanoAOD file to resample")
    parser.add_argument("--prefix", default="nano", help="file names: <prefix>_000.root, ...")
    parser.add_argument("--fileset", help="also add the files to this fileset file (JSON)")
    parser.add_argument("--dataset", default="ttbar", help="data set name in --fileset")
    parser.add_argument("--namespace", help="the files' directory in the storage namespace, e.g. "
                        "/store/data/ttbar (required with --fileset)")
    args = parser.parse_args(argv)
    if args.fileset and not (args.namespace and args.namespace.startswith("/")):
        parser.error("--fileset needs --namespace, an absolute namespace path such as /store/data/ttbar")
    try:
        paths = generate(args.out, args.files, args.events, seed=args.seed, source=args.source,
                         prefix=args.prefix)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.fileset:
        namespace = args.namespace.rstrip("/")
        target = write_fileset(args.fileset, {args.dataset: [f"{namespace}/{p.name}" for p in paths]})
        print(f"data set {args.dataset!r} ({len(paths)} files) added to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
