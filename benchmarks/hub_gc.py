"""Garbage-collection hooks for the benchmarks' hubs (called from their extra config files).

- ``install_gc_signal``: SIGUSR2 makes the hub run ``gc.collect()`` (the memory benchmark sends it
  before it reads the hub's RSS);
- ``install_gc_log``: every full (generation 2) collection is logged with its duration: these stop
  the hub's event loop, and the benchmarks count them beside their latency figures.

Both run at config load, in the hub's main thread.
"""

from __future__ import annotations

import gc
import logging
import re
import signal
import time
from pathlib import Path
from typing import Any

LINE = re.compile(r"benchmark: full gc took (\d+(?:\.\d+)?) ms")


def install_gc_signal(log: logging.Logger | None = None) -> None:
    """Run ``gc.collect()`` in this process when it receives SIGUSR2."""
    log = log or logging.getLogger("JupyterHub")

    def collect(signum: int, frame: Any) -> None:
        found = gc.collect()
        log.info("benchmark: gc.collect() on SIGUSR2 found %d unreachable objects", found)

    signal.signal(signal.SIGUSR2, collect)


def install_gc_log(log: logging.Logger | None = None) -> None:
    """Log the duration of every automatic generation-2 collection of this process."""
    log = log or logging.getLogger("JupyterHub")
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            log.info("benchmark: full gc took %.1f ms, %d objects collected",
                     (time.perf_counter() - started[0]) * 1000, info.get("collected", 0))

    gc.callbacks.append(callback)


def full_gcs(hub_log: Path, skip_lines: int = 0) -> tuple[list[float], int]:
    """Durations (ms) of the full collections logged in ``hub_log`` after its first ``skip_lines``
    lines, and the file's line count now (pass it as ``skip_lines`` next time)."""
    lines = hub_log.read_text(errors="replace").splitlines()
    return [float(m[1]) for line in lines[skip_lines:] if (m := LINE.search(line))], len(lines)
