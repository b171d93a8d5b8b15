"""The one facility factory of the end-to-end tests.

Every running facility in the suite is a ``DemoFacility`` (real provider, hub, proxy, issuer)
configured as an admin configures a hub: the shipped drop-ins reading a site file, the demo's
loopback overlay, then this module's test overlay (an admin API service) and the test's own hub
config files. ``site`` is merged into the site file, so tests change facility settings the way a
site does. Each start is counted; the count is printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from casa_hub.common.ports import free_port
from casa_hub.demo.facility import DemoFacility

ADMIN_OVERLAY = Path(__file__).with_name("admin_service_config.py")

#: names of the facilities started in this test run, in order (printed by conftest)
STARTS: list[str] = []


class TestFacility(DemoFacility):
    """A ``DemoFacility`` that records its start-ups (hub restarts are not counted)."""

    __test__ = False  # not a test class
    name: str = "facility"

    def start(self, timeout: float = 90.0) -> None:
        STARTS.append(self.name)
        super().start(timeout)


def make_facility(state_dir: Path, admin_token: str, *, name: str = "facility",
                  hub_configs: Sequence[str | Path] = (), site: dict[str, Any] | None = None,
                  extra_env: dict[str, str] | None = None, **kw: Any) -> TestFacility:
    """A facility on free loopback ports, not started yet (``with`` starts and stops it; call
    ``prepare()`` first to change the provider's users or config).

    ``hub_configs``: config files (``Path``) or config texts (``str``, written next to the state
    directory), loaded after everything else. ``site``: sections merged into the site file.
    ``kw``: any other ``DemoFacility`` field (``dask``, ``idp_overrides``, ``issuer_url_override``, ...).
    """
    state_dir = Path(state_dir)
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    extra: list[Path] = [ADMIN_OVERLAY]
    for i, config in enumerate(hub_configs):
        if isinstance(config, Path):
            extra.append(config)
        else:
            path = state_dir.parent / f"{state_dir.name}-hub-config-{i}.py"
            path.write_text(config)
            extra.append(path)
    kw.setdefault("hub_port", free_port())
    kw.setdefault("idp_port", free_port())
    fac = TestFacility(state_dir, extra_env={"CASA_TEST_ADMIN_TOKEN": admin_token, **(extra_env or {})},
                       extra_hub_config=extra, site_overrides=site or {},
                       progress=lambda msg: print(f"{name} facility: {msg}"), **kw)
    fac.name = name
    return fac


@contextmanager
def running_facility(tmp_path_factory: Any, name: str, admin_token: str, *hub_configs: str | Path,
                     **kw: Any) -> Iterator[TestFacility]:
    """``make_facility`` in a fresh temporary directory, started, and stopped on exit."""
    fac = make_facility(tmp_path_factory.mktemp(name) / "facility", admin_token, name=name,
                        hub_configs=hub_configs, **kw)
    with fac:
        yield fac


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many facilities this run started (each is a provider, a hub and a proxy)."""
    if STARTS:
        counts: dict[str, int] = {}
        for name in STARTS:
            counts[name] = counts.get(name, 0) + 1
        detail = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items())
        terminalreporter.write_line(f"facility start-ups: {len(STARTS)} ({detail})")
