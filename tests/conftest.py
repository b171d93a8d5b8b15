"""Fixtures: real services started once per test session and stopped cleanly.

The suite is laid out by layer: ``unit/`` (no process of ours), ``hub/`` (in-process hubs and spawners
against stand-ins), ``deploy/`` (Helm values, images), ``e2e/`` (real provider, hub, proxy, notebooks),
``site/`` (real XRootD and Slurm), ``browser/`` (headless Chromium); ``support/`` holds the fixtures
and the one facility factory (``support/facilities.py``). Layers run in that order. The facility
``facility`` below is the session's default; facilities that several modules share are in
``support/shared_facilities.py``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import facilities
import parallel
import pytest
from dask_gateways import job_user  # noqa: F401 - the Unix account of the Slurm gateway's jobs
from facilities import TestFacility, make_facility
from leak_scan import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401 - fails the run on a token leak
from shared_facilities import (  # noqa: F401 - facilities that several modules share (see there)
    shared_analysis_facility,
    shared_dask_facility,
    shared_integrations_facility,
    shared_pages_facility,
    shared_probe,
    shared_servicex,
    shared_token_proxy,
)
from slurm_fixture import slurm_site  # noqa: F401 - real Slurm in the XRootD site's namespace
from xrootd_fixture import xrootd_facility, xrootd_site  # noqa: F401 - real XRootD origin + XCache

ARTIFACTS = Path(os.environ.get("CASA_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def pytest_configure(config):
    # the facility factory's own hook prints the number of facility start-ups at the end of the run
    config.pluginmanager.register(facilities, "casa-facilities")
    parallel.configure(config)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def admin_token() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="session")
def facility(tmp_path_factory, admin_token) -> TestFacility:
    """The demo facility (OIDC provider, hub, proxy, issuer, local spawner) on free ports."""
    fac = make_facility(tmp_path_factory.mktemp("facility") / "facility", admin_token, name="session")
    with fac:
        yield fac


LAYERS = ["unit", "hub", "deploy", "e2e", "site", "browser"]


def _layer(item) -> str:
    parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
    return parts[0] if parts[0] in LAYERS else "other"


def pytest_collection_modifyitems(config, items):
    # fast layers first, browser tests last: failures show up early
    items.sort(key=lambda item: LAYERS.index(_layer(item)) if _layer(item) in LAYERS else len(LAYERS))
    if parallel.in_parallel_run(config):  # in parallel: groups that share what they must, longest first
        items[:] = parallel.assign_groups(items, _layer)


@pytest.hookimpl(tryfirst=True)  # before the worker tells the controller it has collected
def pytest_collection_finish(session):
    parallel.publish_groups(session)  # a worker of a parallel run: each test's group, for the scheduler


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # only for --dist loadgroup (scripts/test.sh); any other --dist keeps pytest-xdist's own scheduler
    return parallel.make_scheduler(config, log) if parallel.in_parallel_run(config) else None
