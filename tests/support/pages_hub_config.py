# Extra hub configuration for tests/test_browser_pages.py (loaded after the demo's own config).
#
# - the facility's name, logo and support link;
# - server profiles by group (casa_hub.spawner.profiles);
# - two facility services that ask a small HTTP service run by the test (CASA_TEST_PROBE_URL):
#   "Test data service" (its health is checked before a notebook is configured; a spawn is refused
#   with a clear message while it is down; its /gate lets the test hold a spawn between two steps)
#   and a Dask cluster whose live status comes from the same service (/cluster);
# - the spawn-pending page is shown at once (no 10 s wait), as on Zero to JupyterHub.
import asyncio
import json
import os
import urllib.error
import urllib.request

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from casa_hub.integrations.base import Contribution, Integration, IntegrationError
from casa_hub.integrations.xcache import XCacheIntegration

c = get_config()  # noqa: F821 - provided by JupyterHub

PROBE_URL = os.environ["CASA_TEST_PROBE_URL"]
LOGO = ("data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 10 10'>"
        "<rect width='10' height='10' fill='%23004d80'/></svg>")

c.CasaFacility.name = "Test Analysis Facility"
c.CasaFacility.logo_url = LOGO
c.CasaFacility.support_url = "https://support.test-facility.invalid/help"
c.CasaFacility.status_timeout = 10.0
c.CasaOIDCAuthenticator.login_service = "Test Facility Login"
c.JupyterHub.tornado_settings.update({"slow_spawn_timeout": 0})

c.CasaProfiles.profiles = [
    {"slug": "standard", "display_name": "Standard", "default": True, "groups": ["physicists"],
     "description": "1 CPU and 2 GB of memory, for most analyses.", "cpu_limit": 1, "mem_limit": "2G"},
    {"slug": "large", "display_name": "Large memory", "groups": ["physicists"],
     "description": "2 CPUs and 8 GB of memory, for large histograms and training.",
     "cpu_limit": 2, "mem_limit": "8G"},
    {"slug": "operations", "display_name": "Operations", "groups": ["facility-admins"],
     "description": "For the facility's administrators."},
]


async def _get_json(path: str) -> dict:
    try:
        response = await AsyncHTTPClient().fetch(PROBE_URL + path, request_timeout=5)
    except HTTPClientError as e:
        raise IntegrationError(f"the service at {PROBE_URL} is down (HTTP {e.code})") from None
    except OSError:
        raise IntegrationError(f"the service at {PROBE_URL} did not answer") from None
    return json.loads(response.body)


class TestDataService(Integration):
    """A facility service that must answer before a notebook is configured for it."""

    name = "testdata"
    title = "Test data service"
    endpoint = PROBE_URL

    async def prepare(self, ctx) -> None:
        # the test holds a spawn here (between the "tokens" and "services" steps) with /gate
        while not (await _get_json("/gate"))["open"]:
            await asyncio.sleep(0.1)

    def contribute(self, ctx) -> Contribution:
        try:
            urllib.request.urlopen(PROBE_URL + "/health", timeout=5).close()
        except urllib.error.HTTPError as e:
            raise IntegrationError(f"the service at {PROBE_URL} is down (HTTP {e.code})") from None
        except OSError:
            raise IntegrationError(f"the service at {PROBE_URL} did not answer") from None
        return Contribution(env={"CASA_TEST_DATA_URL": PROBE_URL})

    async def status(self, username: str) -> dict:
        return {"state": (await _get_json("/health"))["state"]}


class TestCluster(Integration):
    """A per-user cluster whose state the test's service reports."""

    name = "dask"
    title = "Dask cluster"
    endpoint = PROBE_URL + "/gateway"

    async def status(self, username: str) -> dict:
        return await _get_json(f"/cluster?user={username}")


c.CasaSpawnerMixin.integration_classes = [XCacheIntegration, TestDataService, TestCluster]
