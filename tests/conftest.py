"""Fixtures: real services started once per test session and stopped cleanly."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from leak_scan import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401 - fails the run on a token leak
from slurm_fixture import slurm_site  # noqa: F401 - real Slurm in the XRootD site's namespace
from xrootd_fixture import xrootd_facility, xrootd_site  # noqa: F401 - real XRootD origin + XCache

from casa_hub.demo.facility import DemoFacility, free_port

ARTIFACTS = Path(os.environ.get("CASA_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def admin_token() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="session")
def facility(tmp_path_factory, admin_token) -> DemoFacility:
    """The demo facility (OIDC provider, hub, proxy, issuer, local spawner) on free ports."""
    fac = DemoFacility(
        tmp_path_factory.mktemp("facility"),
        hub_port=free_port(),
        idp_port=free_port(),
        extra_env={"CASA_DEMO_ADMIN_TOKEN": admin_token},
        progress=lambda msg: print(f"facility: {msg}"),
    )
    with fac:
        yield fac


def pytest_collection_modifyitems(config, items):
    # run unit tests first, browser tests last: failures show up early
    order = {"browser": 2, "e2e": 1}
    items.sort(key=lambda it: max((order.get(m.name, 0) for m in it.iter_markers()), default=0))
