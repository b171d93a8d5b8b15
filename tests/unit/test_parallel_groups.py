"""tests/support/parallel.py: which tests a parallel run keeps together, and in which order it hands
groups out (a wrong group starts a shared facility twice or runs a module's tests apart)."""

from __future__ import annotations

from pathlib import Path

import parallel
import pytest


class FakeItem:
    def __init__(self, path: str, name: str, fixtures: tuple[str, ...] = (), marks: tuple = ()) -> None:
        self.fspath = Path("/repo/tests") / path
        self.nodeid = f"tests/{path}::{name}"
        self.fixturenames = list(fixtures)
        self.marks = list(marks)
        self.stash = pytest.Stash()

    def get_closest_marker(self, name: str):
        return next((m for m in self.marks if m.name == name), None)

    def iter_markers(self, name: str):
        return (m for m in self.marks if m.name == name)


def layer(item: FakeItem) -> str:
    return item.fspath.parent.name


def mark(name: str, *args):
    return getattr(pytest.mark, name)(*args).mark


def test_a_module_stays_together_and_users_of_a_shared_resource_join_one_group():
    items = [
        FakeItem("unit/test_a.py", "test_1"), FakeItem("unit/test_a.py", "test_2"),
        FakeItem("e2e/test_b.py", "test_1", ("shared_pages_facility", "facility")),
        FakeItem("e2e/test_c.py", "test_1", ("facility",)),
        FakeItem("browser/test_d.py", "test_1", ("shared_pages_facility",)),
        FakeItem("site/test_e.py", "test_1", ("job_user",)),
        FakeItem("site/test_f.py", "test_1[x]"), FakeItem("site/test_f.py", "test_1[y]", marks=(mark("shares", "job_user"),)),
    ]
    items[6].marks.append(mark("run_apart"))
    items[7].marks.append(mark("run_apart"))
    parallel.assign_groups(items, layer)
    group = [it.stash[parallel.GROUP] for it in items]
    assert group[0] == group[1], "a module's tests run in one worker"
    assert group[2] == group[4] != group[3], "a shared facility's users run in one worker, the default facility not"
    assert group[5] == group[7] != group[6], "job_user is one per run; run_apart splits a module"
    assert len({group[0], group[2], group[3], group[5], group[6]}) == 5


def test_groups_are_handed_out_longest_first_keeping_their_own_order():
    items = [
        FakeItem("unit/test_a.py", "test_1"),
        FakeItem("e2e/test_b.py", "test_1"), FakeItem("e2e/test_b.py", "test_2"),
        FakeItem("site/test_c.py", "test_1", marks=(mark("slow", 120),)),
        FakeItem("e2e/test_d.py", "test_1", ("shared_x",)), FakeItem("browser/test_e.py", "test_1", ("shared_x",)),
    ]
    ordered = [it.nodeid for it in parallel.assign_groups(items, layer)]
    assert ordered == ["tests/site/test_c.py::test_1",  # 120 s
                       "tests/e2e/test_d.py::test_1", "tests/browser/test_e.py::test_1",  # 1 + 5 s
                       "tests/e2e/test_b.py::test_1", "tests/e2e/test_b.py::test_2",  # 1 + 1 s
                       "tests/unit/test_a.py::test_1"]


@pytest.mark.parametrize("value, expected", [(None, (0, 1)), ("1/2", (1, 2)), ("0/3", (0, 3))])
def test_a_run_takes_its_share_of_the_ports(value, expected):
    assert parallel.port_share(value) == expected


@pytest.mark.parametrize("value", ["2/2", "x", "1/0", "-1/2"])
def test_a_bad_port_share_is_refused_with_its_name(value):
    with pytest.raises(pytest.UsageError, match="CASA_TEST_PORT_SHARE"):
        parallel.port_share(value)
