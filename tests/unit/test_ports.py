"""casa_hub.common.ports: a free port is chosen outside the kernel's ephemeral range (where an outgoing
connection could take it before a slow server binds it) and never twice by one process."""

from __future__ import annotations

import socket

import pytest

from casa_hub.common import ports


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable():
    low, _high = ports.ephemeral_range()
    chosen = [ports.free_port() for _ in range(50)]
    assert len(set(chosen)) == 50
    assert all(ports.LOWEST <= p < low for p in chosen), chosen
    with socket.socket() as s:
        s.bind(("127.0.0.1", chosen[0]))


def test_a_port_in_use_or_already_given_is_never_chosen(monkeypatch):
    given = ports.free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        other = ports.free_port()  # free, and given out once already: chosen by nobody again
        offers = iter([taken, given, other, given, taken, 25001, 25002, 25003])
        monkeypatch.setattr(ports.random, "choice", lambda candidates: next(offers))
        port = ports.free_port()
    assert port not in (taken, given, other) and port in (25001, 25002, 25003)


@pytest.mark.parametrize("content, expected", [("32768\t60999\n", (32768, 60999)), ("garbage", (32768, 60999))])
def test_the_range_is_read_from_the_kernel_or_linux_default(tmp_path, content, expected):
    f = tmp_path / "ip_local_port_range"
    f.write_text(content)
    assert ports.ephemeral_range(f) == expected
    assert ports.ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_without_room_outside_the_range_the_kernel_picks(monkeypatch):
    monkeypatch.setattr(ports, "_narrowed", None)  # as in a serial run (a parallel worker narrows it)
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    port = ports.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_narrowed_range_is_the_only_one_used_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.setattr(ports, "_narrowed", None)
    low, high = ports.default_range()
    middle = (low + high) // 2
    ports.narrow_range(middle, middle + 2000)  # wide enough to choose in (else the kernel picks)
    chosen = [ports.free_port() for _ in range(10)]
    assert all(middle <= p < middle + 2000 for p in chosen) and len(set(chosen)) == 10, chosen
    for bad in [(30000, 30000), (0, 10), (40000, 70000)]:
        with pytest.raises(ValueError, match="not a port range"):
            ports.narrow_range(*bad)
    assert ports._narrowed == (middle, middle + 2000), "a refused range leaves the last good one"
