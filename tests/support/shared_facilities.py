"""Facilities that several test modules share: session fixtures, each started when the first test that
needs it runs and stopped right after the last one (``facilities.release_after_last_use``), so that a
run starts each once instead of once per module.

Each has one configuration that every module using it can live with, and every module leaves it as
it found it: the servers it started are stopped when it ends (``facilities.stop_servers``), and the
provider users it needs are the facility's from the start. Who uses which, and for what:

``shared_dask_facility`` ("dask"): the demo facility with its Dask Gateway (local backend), and a 45 s
xcache grant (no htcondor grant) that the renewal agent in every server renews.

- e2e/test_dask_gateway_e2e.py: the gateway; the site's cluster options; spawns answered with 202 at once;
- e2e/test_pages_api.py (its Dask section): the gateway;
- e2e/test_renewal_e2e.py: the short xcache grant; the agent looking for token files every 2 s; the
  broker's rate limit (the demo's 30 per minute).

``shared_pages_facility`` ("pages"): tests/support/pages_hub_config.py (the facility's name, logo and
support link; two services asking ``shared_probe``) with server profiles by group, no renewal agent in
servers, no broker rate limit to speak of, keys re-read every 0.2 s, provider users with hostile
claims, and a spawn answered once it is 5 s old (pages_hub_config.py: at once; see ``PROFILES_CONFIG``).

- e2e/test_e2e_key_rotation.py: the key reload; no rate limit (it rotates the key: tokens minted
  before verify with the retired key, which stays published, later ones with the new key);
- e2e/test_fuzz_broker.py: no rate limit; any published key (it reads the JWKS when it starts);
- e2e/test_hostile_inputs.py: no rate limit; the profiles standard and admin-gpu; the hostile users;
- e2e/test_profiles_e2e.py: the profiles (large: 2 CPUs, 8 GB, its env); no renewal agent;
- browser/test_browser_pages.py: pages_hub_config.py and the probe; the profiles (standard, large,
  operations); the spawn-pending page (after 5 s).

``shared_integrations_facility`` ("integrations"): the XCache, ServiceX, HTCondor, Triton and MLflow
integrations with their grants, a real ``mlflow server`` (``fac.mlflow_server``) and a recording
ServiceX (``shared_servicex``); the hub reaches the provider's token endpoint through ``TokenProxy``
(``shared_token_proxy``), and the provider has a second client (``fac.other_client``) and users with
hostile claims. Only alice signs in here before test_login_rejections.py, which needs bob never to have.

- e2e/test_integration_mlflow_e2e.py: the mlflow grant and integration, the MLflow server;
- e2e/test_integration_notebook.py: the four integrations, their grants, the recording ServiceX;
- e2e/test_login_rejections.py: the token proxy, the second client, the hostile users.

``shared_analysis_facility`` ("analysis"): the demo facility with its Dask Gateway, its MLflow server, its data
cache (real XRootD origin + XCache, ``casa_hub.demo.data_cache``) and the sample data set ttbar
(``ANALYSIS_FILES`` x ``ANALYSIS_EVENTS``) read through it; storage tokens of ``ANALYSIS_TOKEN_LIFETIME``
seconds; alice's home holds the example notebook.

- e2e/test_analysis_on_the_facility.py: the notebook's cells in alice's server environment; her newest run;
- browser/test_browser_notebook.py: the notebook in JupyterLab; the run made after the test began (the
  notebook file is the one placed at her first start: the e2e module runs its cells, never saves it).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from facilities import TestFacility, make_facility, release_after_last_use
from integration_support import RecordingServiceX
from mlflow_server import MLFLOW_GRANT, MLflowServer
from pages_support import ProbeService
from token_proxy import TokenProxy

from casa_hub.common.ports import free_port
from casa_hub.demo.data_cache import data_cache_missing

# ---- dask -------------------------------------------------------------------------------------------

DASK_CONFIG = """\
c.DaskIntegration.cluster_options = {'worker_memory': 0.5}  # from the site's settings
# answer a spawn request with 202 at once, so that the test reads the progress stream live
c.JupyterHub.tornado_settings.update({'slow_spawn_timeout': 0})
"""
#: the xcache grant's lifetime: renewals happen while the renewal tests watch
RENEWAL_LIFETIME = 45
RENEWAL_CONFIG = f"""
c.CasaTokenIssuer.grants = {{
    "xcache": {{"audience": "casa-demo-xcache", "scopes": ["storage.read:/user/{{username}}"],
               "lifetime": {RENEWAL_LIFETIME}, "groups": ["physicists"]}},
    "operations": {{"audience": "casa-demo-xcache", "scopes": ["storage.read:/"], "lifetime": 600,
                   "groups": ["facility-admins"]}},
}}
c.Spawner.args.append("--CasaTokenRenewal.rescan_interval=2")  # merged into the demo's args
"""

# ---- pages ------------------------------------------------------------------------------------------

PAGES_HUB_CONFIG = Path(__file__).with_name("pages_hub_config.py")
KEY_RELOAD_CONFIG = "c.CasaTokenIssuer.key_reload_interval = 0.2\n"
#: after pages_hub_config.py: its profiles (standard, large, operations) and the GPU profile of
#: test_profiles_e2e.py and test_hostile_inputs.py
PROFILES_CONFIG = '''
c.CasaProfiles.profiles = [
    {"slug": "standard", "display_name": "Standard", "default": True, "groups": ["physicists"],
     "description": "1 CPU and 2 GB of memory, for most analyses.", "cpu_limit": 1, "mem_limit": "2G",
     "env": {"CASA_SITE_QUEUE": "standard"}},
    {"slug": "large", "display_name": "Large memory", "groups": ["physicists"],
     "description": "2 CPUs and 8 GB of memory, for large histograms and training.",
     "cpu_limit": 2, "mem_limit": "8G", "env": {"CASA_SITE_QUEUE": "large"}},
    {"slug": "operations", "display_name": "Operations", "groups": ["facility-admins"],
     "description": "For the facility's administrators."},
    {"slug": "admin-gpu", "display_name": "GPU (facility admins)", "groups": ["facility-admins"],
     "gpus": 1, "mem_limit": "32G", "env": {"CASA_SITE_QUEUE": "gpu"}},
]
# the broker's own update of the token file is checked (test_profiles_e2e.py), not the notebook's renewal agent
c.CasaSpawnerMixin.renewal_agent = False
# pages_hub_config.py shows the spawn-pending page at once (0 s). Then JupyterHub answers an API spawn
# with 202 before the spawner's start() refuses a profile; test_hostile_inputs.py and
# test_profiles_e2e.py want that refusal (400, 403) as the answer, as with the default 10 s. A
# refusal takes milliseconds: 5 s keeps it the answer, and the page tests wait 5 s for spawn-pending.
c.JupyterHub.tornado_settings.update({"slow_spawn_timeout": 5})
'''
#: provider login name -> the preferred_username claim it signs in with (test_hostile_inputs.py)
HOSTILE_NAMES = {"cyrillic": "\u0430lice", "fullwidth": "\uff41\uff4c\uff49\uff43\uff45", "zwj": "al\u200dice",
                 "rtl": "\u202eecila", "kelvin": "\u212aate", "dots": "../bob", "longname": "a" * 4096}
LOOKALIKE_GROUPS = ["physicists", "facility-admins\u200b", "Facility-Admins", "/facility-admins/../x"]

# ---- integrations -----------------------------------------------------------------------------------

INTEGRATIONS_CONFIG = """
from casa_hub.integrations import HTCondorIntegration, ServiceXIntegration, TritonIntegration


class SecondServiceX(ServiceXIntegration):
    name = "servicex-second"


c.CasaTokenIssuer.grants.update({{
    "servicex": {{"audience": "casa-test-servicex", "scopes": ["servicex.submit"], "groups": ["physicists"]}},
    "triton": {{"audience": "casa-test-triton", "scopes": ["triton.infer"], "groups": ["physicists"]}},
}})
c.CasaSpawnerMixin.integration_classes.extend(
    [ServiceXIntegration, HTCondorIntegration, TritonIntegration, SecondServiceX])
c.XCacheIntegration.endpoint = "roots://xcache.casa.invalid:1094"
c.XCacheIntegration.ca_dir = "/etc/ssl/certs"
c.XCacheIntegration.client_settings = {{"XRD_REQUESTTIMEOUT": "120"}}
c.ServiceXIntegration.endpoint = {servicex_url!r}
c.SecondServiceX.endpoint = "servicex.casa.invalid"  # no scheme: skipped, reason in the hub log
c.HTCondorIntegration.collector_host = "cm.casa.invalid:9618"
c.HTCondorIntegration.schedd_host = "submit.casa.invalid"
c.TritonIntegration.endpoints = {{"gpu": "grpc://127.0.0.1:8001"}}
c.TritonIntegration.grant = "triton"
c.TritonIntegration.model_repository = "s3://models/{{username}}"
c.TritonIntegration.model_repository_credentials_file = "/etc/casa/s3/{{username}}.ini"
"""
MLFLOW_CONFIG = """
from casa_hub.integrations.mlflow.integration import MLflowIntegration
c.CasaTokenIssuer.grants.update({{"mlflow": {grant!r}}})  # merged into the demo's grants
c.CasaSpawnerMixin.integration_classes.append(MLflowIntegration)
c.MLflowIntegration.tracking_uri = {uri!r}
"""
TOKEN_PROXY_CONFIG = "c = get_config()  # noqa: F821\nc.CasaOIDCAuthenticator.token_url = {url!r}\n"
#: a second client of the provider (test_login_rejections.py asks it for ID tokens)
OTHER_REDIRECT = "http://127.0.0.1:9/other-app/callback"  # never visited: the code is read from Location
#: provider login name -> the preferred_username claim it signs in with (test_login_rejections.py)
REJECTED_NAMES = {"dots": "../bob", "slash": "a/b", "newline": "alice\nadmin", "nul": "bob\x00"}


# ---- fixtures ---------------------------------------------------------------------------------------

@contextmanager
def released_after_last_use(fixture: str) -> Iterator[ExitStack]:
    """An exit stack closed right after the last test that uses ``fixture``, or at the end of the run."""
    with ExitStack() as stack:
        release_after_last_use(fixture, stack.close)
        yield stack


@pytest.fixture(scope="session")
def shared_dask_facility(tmp_path_factory, admin_token) -> Iterator[TestFacility]:
    """The demo facility with its Dask Gateway service (local backend) and a 45 s xcache grant."""
    with released_after_last_use("shared_dask_facility") as stack:
        fac = make_facility(tmp_path_factory.mktemp("dask-facility") / "facility", admin_token, name="dask",
                            dask=True, hub_configs=[DASK_CONFIG, RENEWAL_CONFIG])
        yield stack.enter_context(fac)


#: the analysis facility's sample data set: files x events per file
ANALYSIS_FILES, ANALYSIS_EVENTS = 2, 400
#: the analysis facility's storage tokens (grant xcache) live this long, so that an analysis outlives one
ANALYSIS_TOKEN_LIFETIME = 60
ANALYSIS_CONFIG = f"""
c.CasaTokenIssuer.grants["xcache"]["lifetime"] = {ANALYSIS_TOKEN_LIFETIME}
"""


@pytest.fixture(scope="session")
def shared_analysis_facility(tmp_path_factory, admin_token) -> Iterator[TestFacility]:
    """The demo facility with Dask Gateway, MLflow, the data cache and the sample data set."""
    reason = data_cache_missing()
    if reason:
        pytest.fail(f"the analysis facility reads through the real XCache, which cannot run here: {reason}")
    with released_after_last_use("shared_analysis_facility") as stack:
        fac = make_facility(tmp_path_factory.mktemp("analysis-facility") / "facility", admin_token,
                            name="analysis", dask=True, mlflow=True, xcache=True, data_files=ANALYSIS_FILES,
                            data_events=ANALYSIS_EVENTS, hub_configs=[ANALYSIS_CONFIG])
        stack.enter_context(fac)
        if fac.data_cache is None:
            pytest.fail("the analysis facility runs without its data cache: see its progress lines above")
        yield fac


@pytest.fixture(scope="session")
def shared_probe() -> Iterator[ProbeService]:
    """The small HTTP service that the pages facility's services ask (pages_support.ProbeService)."""
    with released_after_last_use("shared_probe") as stack:
        service = ProbeService()
        service.start()
        stack.callback(service.stop)
        yield service


@pytest.fixture(scope="session")
def shared_pages_facility(tmp_path_factory, admin_token, shared_probe) -> Iterator[TestFacility]:
    """The pages' facility with profiles, no broker rate limit, fast key reload and hostile users;
    ``fac.passwords``: every provider user's password."""
    with released_after_last_use("shared_pages_facility") as stack:
        fac = make_facility(tmp_path_factory.mktemp("pages-facility") / "facility", admin_token, name="pages",
                            hub_configs=[KEY_RELOAD_CONFIG, PAGES_HUB_CONFIG, PROFILES_CONFIG],
                            site={"tokens": {"broker_rate_per_minute": 1000000}},
                            extra_env={"CASA_TEST_PROBE_URL": shared_probe.url})
        fac.prepare()  # creates the demo users, reused by start()
        physicist = {"groups": ["physicists"]}
        users = [*fac.users(), dict(physicist, username="kate")]
        users += [dict(physicist, username=k, claims={"preferred_username": v}) for k, v in HOSTILE_NAMES.items()]
        users += [dict(physicist, username="bigclaim", claims={"name": "x" * 65536}),
                  dict(username="groupy", groups=LOOKALIKE_GROUPS)]
        for u in users:
            u.setdefault("password", secrets.token_urlsafe(12))
        fac.idp_overrides = {"users": users}
        fac.passwords = {u["username"]: u["password"] for u in users}
        yield stack.enter_context(fac)


@pytest.fixture(scope="session")
def shared_servicex() -> Iterator[RecordingServiceX]:
    """The stand-in ServiceX that the integrations facility's notebooks are configured for."""
    with released_after_last_use("shared_servicex") as stack:
        yield stack.enter_context(RecordingServiceX())


@pytest.fixture(scope="session")
def shared_token_proxy() -> Iterator[TokenProxy]:
    """Between the integrations facility's hub and its provider's token endpoint (passes everything
    through unless a test sets ``rewrite``)."""
    with released_after_last_use("shared_token_proxy") as stack:
        server = TokenProxy()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        yield server


@pytest.fixture(scope="session")
def shared_integrations_facility(tmp_path_factory, admin_token, shared_servicex,
                                 shared_token_proxy) -> Iterator[TestFacility]:
    """The integrations facility; ``fac.mlflow_server``: the MLflow server trusting its issuer;
    ``fac.passwords``: every provider user's password; ``fac.other_client``: the provider's second
    client (id, secret)."""
    with released_after_last_use("shared_integrations_facility") as stack:
        root = tmp_path_factory.mktemp("integrations-facility")
        hub_port = free_port()
        server = MLflowServer(root / "mlflow", free_port(), f"http://127.0.0.1:{hub_port}/hub/casa-issuer")
        fac: Any = make_facility(root / "facility", admin_token, name="integrations", hub_port=hub_port,
                                 hub_configs=[INTEGRATIONS_CONFIG.format(servicex_url=shared_servicex.url),
                                              MLFLOW_CONFIG.format(grant=MLFLOW_GRANT, uri=server.url),
                                              TOKEN_PROXY_CONFIG.format(url=shared_token_proxy.url)])
        fac.prepare()  # creates the client secret and demo users, reused by start()
        secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
        fac.other_client = ("other-app", secrets.token_urlsafe(24))
        physicist = {"groups": ["physicists"], "password": secrets.token_urlsafe(12)}
        extra_users = [dict(physicist, username="frank")]
        extra_users += [dict(physicist, username="nameless", claims={"preferred_username": None})]
        extra_users += [dict(physicist, username=k, claims={"preferred_username": v})
                        for k, v in REJECTED_NAMES.items()]
        fac.idp_overrides = {
            "clients": [
                {"client_id": "casa-hub", "client_secret": secret,
                 "redirect_uris": [f"{fac.hub_url}/hub/oauth_callback"],
                 "post_logout_redirect_uris": [f"{fac.hub_url}/hub/login"]},
                {"client_id": fac.other_client[0], "client_secret": fac.other_client[1],
                 "redirect_uris": [OTHER_REDIRECT]},
            ],
            "users": fac.users() + extra_users,
        }
        fac.passwords = {u["username"]: u["password"] for u in fac.idp_overrides["users"]}
        shared_token_proxy.upstream = f"{fac.idp_url}/token"
        stack.callback(server.stop)
        server.start()  # starts while the hub starts; it fetches the issuer's keys at the first token
        stack.enter_context(fac)
        server.wait_ready()
        fac.mlflow_server = server
        yield fac
