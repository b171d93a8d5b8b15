"""A read through the real XCache from a real notebook's environment: the spawner's BEARER_TOKEN_FILE
is all the XRootD client needs."""

from __future__ import annotations

import pytest
from helpers import login_and_start_server, read_server_environ
from xrootd_fixture import CACHE_PORT

pytestmark = pytest.mark.e2e

ALICE_FILE = "/store/user/alice/events.txt"
BOB_FILE = "/store/user/bob/events.txt"


@pytest.fixture(scope="module")
def notebook_env(xrootd_facility, xrootd_site, admin_token) -> dict[str, str]:
    fac = xrootd_facility
    model = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    # what XCacheIntegration.ca_dir exports at a site; here the test site's CA
    env["X509_CERT_DIR"] = str(xrootd_site.ca_dir)
    return env


def xrdcp(site, env: dict[str, str], path: str):
    return site._run_in_netns(["xrdcp", "-f", "-s", f"root://localhost:{CACHE_PORT}/{path}", "-"], env=env)


def test_notebook_environment_reads_own_data_through_the_cache(xrootd_site, notebook_env):
    assert notebook_env["BEARER_TOKEN_FILE"].endswith("/xcache.token")
    r = xrdcp(xrootd_site, notebook_env, ALICE_FILE)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == xrootd_site.files[ALICE_FILE], "the file's content, read with the notebook's token"


def test_notebook_environment_cannot_read_another_users_data(xrootd_site, notebook_env):
    r = xrdcp(xrootd_site, notebook_env, BOB_FILE)
    assert r.returncode != 0 and xrootd_site.files[BOB_FILE] not in r.stdout
    token = open(notebook_env["BEARER_TOKEN_FILE"]).read()
    assert token not in r.stderr.decode(errors="replace")
