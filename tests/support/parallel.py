"""Running the suite in parallel (pytest-xdist, ``-n N --dist loadgroup``; ``scripts/test.sh`` does).

Most of the suite's wall-clock time is waiting: for token lifetimes to pass, for servers to start, for a
provider outage to end. Several workers wait at once. What this plugin guarantees, so that each test
sees exactly what it sees in a serial run:

- **Groups.** A module runs whole in one worker (its module fixtures start once), unless it is marked
  ``run_apart`` (its tests share nothing but session fixtures). Modules and tests that use the same
  shared session resource run in the same worker, in file order: every ``shared_*`` facility (so it
  starts once in the run and ``release_after_last_use`` still sees its last user) and ``job_user`` (the
  Unix account the Slurm jobs run as exists once on the machine; a test that asks for it at run time
  says so with ``@pytest.mark.shares("job_user")``). Every other session fixture (the
  default facility, an XRootD site, a Slurm site) is private to a worker: its namespace, directories
  and ports are its own.
- **Longest first.** Groups are handed out longest first (the estimate: the seconds a ``slow`` mark
  names, else a few seconds per test by layer), each worker taking the next group only when it has
  finished its last one.
- **Ports.** Each worker hands out loopback ports from its own slice of the range below the ephemeral
  ports, so two workers never choose the same port (two runs side by side: ``CASA_TEST_PORT_SHARE``).
- **Counts.** The facility start-ups of all workers are summed in the run's summary; the leak scan runs
  once, in the controller, over every worker's temporary directory.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from casa_hub.common import ports

#: session resources that must exist once in a run: every test using one runs in the same worker
ONE_PER_RUN = ("job_user",)
#: the layers (``tests/<layer>/``) and the seconds a test of each is expected to take
LAYER_SECONDS = {"unit": 0.05, "hub": 0.3, "deploy": 1.0, "e2e": 1.0, "site": 3.0, "browser": 5.0}


def worker_index(config: pytest.Config) -> tuple[int, int] | None:
    """(this worker's index, the number of workers) in a parallel run's worker, else None."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    return int(workerinput["workerid"].removeprefix("gw")), int(workerinput["workercount"])


def in_parallel_run(config: pytest.Config) -> bool:
    """Whether this process is the controller or a worker of a run with ``--dist loadgroup``."""
    return bool(getattr(config.option, "loadgroup", False)) or getattr(config.option, "dist", "no") == "loadgroup"


def port_share(value: str | None) -> tuple[int, int]:
    """``CASA_TEST_PORT_SHARE="K/N"``: this run takes share K (from 0) of N of the port range, for runs
    side by side (``scripts/test.sh`` runs JupyterHub 6 and 5 at once); unset: the whole range."""
    try:
        k, n = (int(x) for x in (value or "0/1").split("/"))
    except ValueError:
        raise pytest.UsageError(f"CASA_TEST_PORT_SHARE must be K/N, not {value!r}") from None
    if not 0 <= k < n:
        raise pytest.UsageError(f"CASA_TEST_PORT_SHARE must be K/N with 0 <= K < N, not {value!r}")
    return k, n


def configure(config: pytest.Config) -> None:
    """Hand out ports only from this run's share of the range, and in a worker from its own slice of it."""
    k, n = port_share(os.environ.get("CASA_TEST_PORT_SHARE"))
    i, workers = worker_index(config) or (0, 1)
    if n == 1 and workers == 1:
        return
    low, high = ports.default_range()
    width = (high - low) // (n * workers)
    start = low + (k * workers + i) * width
    ports.narrow_range(start, start + width)


def _shared_resources(item: pytest.Item) -> set[str]:
    names = {*getattr(item, "fixturenames", ()), *(m.args[0] for m in item.iter_markers("shares"))}
    return {n for n in names if n.startswith("shared_") or n in ONE_PER_RUN}


def _seconds(item: pytest.Item, layer: str) -> float:
    mark = item.get_closest_marker("slow")
    if mark is not None and mark.args:
        return float(mark.args[0])
    return LAYER_SECONDS.get(layer, 1.0)


#: an item's group (``assign_groups``)
GROUP = pytest.StashKey[str]()
#: the file in the controller's temporary directory where the workers publish each test's group
GROUPS_FILE = "casa-test-groups.json"


def assign_groups(items: list[pytest.Item], layer_of: Any) -> list[pytest.Item]:
    """Give every item its group and return the items longest group first (within a group, in the
    order given)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    unit_of: dict[int, str] = {}
    for item in items:
        module = Path(str(item.fspath))
        unit = item.nodeid if item.get_closest_marker("run_apart") else f"{layer_of(item)}/{module.stem}"
        unit_of[id(item)] = unit
        find(unit)
        for resource in _shared_resources(item):
            union(unit, f"resource:{resource}")
    seconds: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        group = find(unit_of[id(item)])
        item.stash[GROUP] = group
        seconds[group] += _seconds(item, layer_of(item))
        first.setdefault(group, i)
    return sorted(items, key=lambda it: (-seconds[it.stash[GROUP]], first[it.stash[GROUP]]))


def publish_groups(session: pytest.Session) -> None:
    """In a worker: write each collected test's group where the controller's scheduler reads it.

    (pytest-xdist's own ``xdist_group`` marks travel in the node ids, which pytest 9 no longer lets a
    plugin change; the file carries the same information.) Every worker writes the same content."""
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is None or not session.config.option.basetemp:
        return
    groups = {item.nodeid: item.stash.get(GROUP, "") for item in session.items}
    path = Path(session.config.option.basetemp).parent / GROUPS_FILE
    tmp = path.with_name(f".{path.name}.{workerinput['workerid']}")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)


def record_starts(config: pytest.Config, starts: list[str]) -> None:
    """In a worker: send this worker's facility start-ups to the controller."""
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["casa_facility_starts"] = list(starts)


def collect_starts(node: Any, starts: list[str]) -> None:
    """In the controller: add a finished worker's facility start-ups."""
    starts.extend(getattr(node, "workeroutput", {}).get("casa_facility_starts", []))


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scope scheduler with this plugin's groups as scopes, handed out in the order the
    workers collected them (longest first); a worker gets its next group only when it has one test left
    (the test it holds until it knows the next), so long groups are not queued behind each other."""
    from xdist.scheduler import LoadScopeScheduling

    groups_file = config._tmp_path_factory.getbasetemp() / GROUPS_FILE
    # keep the order the workers collected (longest group first), not xdist's "most tests first"
    config.option.loadscopereorder = False

    class GroupAtATimeScheduling(LoadScopeScheduling):
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # read once every worker has collected (schedule() is called then)
                self._groups = json.loads(groups_file.read_text()) if groups_file.exists() else {}
            return self._groups.get(nodeid) or nodeid.split("::", 1)[0]

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return GroupAtATimeScheduling(config, log)
