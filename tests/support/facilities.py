"""The one facility factory of the end-to-end tests.

Every running facility in the suite is a ``DemoFacility`` (real provider, hub, proxy, issuer)
configured as an admin configures a hub: the shipped drop-ins reading a site file, the demo's
loopback overlay, then this module's test overlay (an admin API service) and the test's own hub
config files. ``site`` is merged into the site file, so tests change facility settings the way a
site does. Each start is counted; the count is printed at the end of the run.

Facilities that several modules share are session fixtures (``shared_facilities.py``); each stops
right after the last test of the run that uses it (``release_after_last_use``), and each module
leaves it as it found it (``stop_servers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import parallel
import pytest
from helpers import admin_api

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


def stop_servers(fac: DemoFacility, admin_token: str, *usernames: str, timeout: float = 90) -> None:
    """Stop these users' servers, if any run, and wait until they are gone: what a module does when
    it is done with a shared facility, so that the next module finds no server of theirs."""
    for name in usernames:
        r = admin_api(fac.hub_url, admin_token, f"/users/{name}")
        if r.status_code == 200 and r.json().get("servers"):
            admin_api(fac.hub_url, admin_token, f"/users/{name}/server", method="DELETE")
    deadline = time.monotonic() + timeout
    for name in usernames:
        while (r := admin_api(fac.hub_url, admin_token, f"/users/{name}")).status_code == 200 and r.json()["servers"]:
            assert time.monotonic() < deadline, f"{name}'s server did not stop within {timeout:.0f} s"
            time.sleep(0.3)


#: session fixtures of shared facilities -> how to stop them (``release_after_last_use``)
_RELEASE: dict[str, Callable[[], None]] = {}
#: fixture name -> the test of the run after which no fixture needs it any more (filled at the first
#: teardown, when the run's tests are known): the last test of the last module with a test using it
#: (``fixturenames`` includes the fixtures' own fixtures; a module's fixtures end with its last test)
_LAST_USER: dict[str, Any] = {}


def release_after_last_use(fixture: str, stop: Callable[[], None]) -> None:
    """Have ``stop`` called right after the last module of the run with a test that uses the session
    fixture ``fixture`` (directly or through other fixtures) has ended, instead of at the end of the
    session: a shared facility lives no longer than the module facilities it replaces did. ``stop``
    must be harmless to call again (the fixture's own teardown still runs at the end)."""
    _RELEASE[fixture] = stop


@pytest.hookimpl(trylast=True)  # after the runner's teardown of the test and of its module's fixtures
def pytest_runtest_teardown(item: Any, nextitem: Any) -> None:
    if not _RELEASE:
        return
    if not _LAST_USER:
        _LAST_USER[""] = None
        last_of_module = {test.path: test for test in item.session.items}
        for test in item.session.items:
            for name in getattr(test, "fixturenames", ()):
                _LAST_USER[name] = last_of_module[test.path]
    for name in reversed([n for n in _RELEASE if _LAST_USER.get(n) is item]):  # the last set up first
        _RELEASE.pop(name)()


def pytest_sessionfinish(session: pytest.Session) -> None:
    parallel.record_starts(session.config, STARTS)  # a worker of a parallel run: tell the controller


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    parallel.collect_starts(node, STARTS)  # the controller of a parallel run: a worker's start-ups


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many facilities this run started (each is a provider, a hub and a proxy)."""
    if STARTS:
        counts: dict[str, int] = {}
        for name in STARTS:
            counts[name] = counts.get(name, 0) + 1
        detail = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items())
        terminalreporter.write_line(f"facility start-ups: {len(STARTS)} ({detail})")
