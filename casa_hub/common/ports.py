"""Loopback ports: is one free, and a free one.

``free_port`` picks outside the kernel's ephemeral range (``net.ipv4.ip_local_port_range``): a port taken
from that range (``bind(0)``) can be given to any outgoing connection between the moment it is chosen and
the moment a slow-starting server binds it ("address already in use"). Below the range, only another
server choosing the same port can take it, and this process never hands out the same port twice.
Processes that choose ports side by side (parallel test workers) each narrow the range to a slice of
their own with ``narrow_range``.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

#: the lowest port handed out (below: ports services of a machine often use)
LOWEST = 20000
_given: set[int] = set()
_lock = threading.Lock()
#: the range this process hands out ports from (``narrow_range``), else None: ``default_range()``
_narrowed: tuple[int, int] | None = None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's range for outgoing connections' ports (Linux's default when it cannot be read)."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def default_range() -> tuple[int, int]:
    """The ports ``free_port`` chooses from, ``[low, high)``: from ``LOWEST`` to the ephemeral range, or
    above it when it starts lower."""
    low, high = ephemeral_range()
    return (LOWEST, low) if low > LOWEST else (high + 1, 65536)


def narrow_range(low: int, high: int) -> None:
    """From now on hand out only ports in ``[low, high)``: a slice of ``default_range()`` that no other
    port-choosing process uses."""
    global _narrowed
    if not 0 < low < high <= 65536:
        raise ValueError(f"not a port range: [{low}, {high})")
    _narrowed = (low, high)


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that was free a moment ago, outside the ephemeral range when there is room."""
    candidates = range(*(_narrowed or default_range()))
    with _lock:
        for _ in range(200 if len(candidates) >= 1000 else 0):
            port = random.choice(candidates)
            if port not in _given and port_is_free(port, host):
                _given.add(port)
                return port
        with socket.socket() as s:  # no room outside the range: any port the kernel gives
            s.bind((host, 0))
            port = s.getsockname()[1]
            _given.add(port)
            return port
