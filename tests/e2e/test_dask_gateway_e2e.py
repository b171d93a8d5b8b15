"""A Dask cluster per user, before the notebook opens: real hub, provider, notebooks and a real
Dask Gateway (local backend) running as a managed JupyterHub service.

The facility of this module is the demo facility with its embedded gateway on (``DemoFacility(dask=True)``),
shared with test_pages_api.py and test_renewal_e2e.py (``shared_dask_facility``, tests/support/shared_facilities.py):
users sign in through the real provider, their servers start as processes, the hub creates each
user's cluster in the gateway as that user, and the notebook's own environment computes on it.
The gateway is asked about clusters as the user, with a token of that user holding the gateway's
scope (what a notebook holds), never as an admin.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import requests
from facilities import stop_servers
from helpers import admin_api, http_login, login_and_start_server, read_server_environ
from traitlets.config import Config, LoggingConfigurable

from casa_hub.demo.facility import DemoFacility, free_port
from casa_hub.integrations.base import IntegrationError, SpawnContext
from casa_hub.integrations.dask.credentials import NOTE
from casa_hub.integrations.dask.integration import DaskIntegration

pytestmark = pytest.mark.e2e

SCOPE = "access:services!service=dask-gateway"

# runs in a subprocess with the notebook server's environment: what a user's notebook does
COMPUTE = r"""
import json, os, psutil
from casa_hub.dask import get_cluster
cluster = get_cluster()
client = cluster.get_client()
total = client.submit(sum, range(10)).result()
worker_pid = client.submit(os.getpid, pure=False).result()
ancestors = [" ".join(p.cmdline()) for p in psutil.Process(worker_pid).parents()]
print(json.dumps({"cluster": cluster.name, "total": total, "worker_pid": worker_pid,
                  "notebook_pid": os.getpid(), "worker_ancestors": ancestors}))
client.close()
"""

ATTACH = r"""
import sys
from casa_hub.dask import NoClusterError, get_client
try:
    get_client(sys.argv[1])
except NoClusterError as e:
    print(e)
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def dask_facility(shared_dask_facility, admin_token):
    """The demo facility with its Dask Gateway service (local backend) on free ports, the site's
    cluster options (worker_memory 0.5) and spawns answered with 202 at once (shared_facilities.DASK_CONFIG).
    alice's and bob's servers (and so their clusters) are stopped when the module ends."""
    yield shared_dask_facility
    stop_servers(shared_dask_facility, admin_token, "alice", "bob")


@pytest.fixture(scope="module")
def gateway_url(dask_facility) -> str:
    """The gateway's address through the hub's proxy, as notebooks reach it."""
    return f"{dask_facility.hub_url}/services/dask-gateway"


def user_token(fac: DemoFacility, admin_token: str, username: str) -> str:
    """A token of ``username`` with the gateway's scope only (what the user's notebook holds)."""
    r = admin_api(fac.hub_url, admin_token, f"/users/{username}/tokens", method="POST",
                  json={"scopes": [SCOPE], "note": "test: the gateway as this user", "expires_in": 900})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def as_user(token: str, method: str, url: str, **kw) -> requests.Response:
    return requests.request(method, url, headers={"Authorization": f"jupyterhub {token}"}, timeout=60, **kw)


def clusters_of(gateway_url: str, token: str, status: str = "PENDING,RUNNING") -> dict:
    r = as_user(token, "GET", f"{gateway_url}/api/v1/clusters/?status={status}")
    assert r.status_code == 200, r.text
    return r.json()


def server_environ(model: dict) -> dict[str, str]:
    return read_server_environ(model["servers"][""]["state"]["pid"])


def run_as_notebook(env: dict[str, str], code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=150)


def wait_until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()):
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


@pytest.mark.slow(15)
def test_cluster_exists_before_the_notebook_starts_and_the_notebook_computes_on_it(
        dask_facility, admin_token, gateway_url, tmp_path):
    fac = dask_facility
    model = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    env = server_environ(model)
    # the name is in the server process's environment, fixed when the process was started: the
    # gateway had created the cluster before the notebook existed, let alone served a request
    name = env.get("CASA_DASK_CLUSTER")
    assert name, "the notebook server must start with CASA_DASK_CLUSTER set"
    alice = user_token(fac, admin_token, "alice")
    listed = clusters_of(gateway_url, alice)
    assert name in listed, f"alice's cluster {name} must be in the gateway as hers; got {list(listed)}"
    assert listed[name]["options"]["worker_memory"] == 0.5, "the site's cluster options must be applied"
    assert env["DASK_GATEWAY__ADDRESS"] == gateway_url and env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    config = Path(env["DASK_CONFIG"]).read_text()
    assert name in config and env["JUPYTERHUB_API_TOKEN"] not in config, \
        "the dask config names the cluster and holds no credential"

    done = run_as_notebook(env, COMPUTE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cluster"] == name and result["total"] == 45, \
        "get_client() in the notebook must attach to the pre-created cluster and compute on it"
    assert result["worker_pid"] != result["notebook_pid"]
    assert any("dask_gateway_server" in cmd for cmd in result["worker_ancestors"]), \
        "the task must have run on a worker the gateway started, not in the notebook"
    metrics = admin_api(fac.hub_url, admin_token, "/metrics").text
    assert re.search(r'^casa_hub_dask_cluster_seconds_count\{phase="submit"\} [1-9]', metrics, re.M), \
        "the admin sees cluster creation times on /hub/metrics"


@pytest.mark.slow(10)
def test_spawn_progress_shows_the_cluster_step(dask_facility, admin_token):
    fac = dask_facility
    s, r = http_login(fac.hub_url, "bob", fac.password("bob"))
    assert r.status_code == 200
    xsrf = {"X-XSRFToken": s.cookies.get("_xsrf", "")}
    r = s.post(f"{fac.hub_url}/hub/api/users/bob/server", headers=xsrf, timeout=60)
    assert r.status_code == 202, f"the spawn should still be pending: {r.status_code} {r.text}"
    messages = []
    with s.get(f"{fac.hub_url}/hub/api/users/bob/server/progress", headers=xsrf, stream=True, timeout=120) as events:
        for line in events.iter_lines():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if event.get("ready") or event.get("failed"):
                    break
    assert event.get("ready"), f"bob's server must start; events: {messages}"
    env = server_environ(admin_api(fac.hub_url, admin_token, "/users/bob").json())
    cluster = env["CASA_DASK_CLUSTER"]
    assert any(f"Dask cluster: created {cluster}" in m for m in messages), \
        f"the spawn-pending page must show the cluster being created; events: {messages}"


def test_another_user_can_neither_see_nor_use_the_cluster(dask_facility, admin_token, gateway_url, tmp_path):
    fac = dask_facility
    alice_env = server_environ(admin_api(fac.hub_url, admin_token, "/users/alice").json())
    bob_model = login_and_start_server(fac.hub_url, admin_token, "bob", fac.password("bob"))
    bob_env = server_environ(bob_model)
    alice_cluster, bob_cluster = alice_env["CASA_DASK_CLUSTER"], bob_env["CASA_DASK_CLUSTER"]
    assert alice_cluster != bob_cluster, "each user must get a cluster of their own"
    bob = user_token(fac, admin_token, "bob")
    assert alice_cluster not in clusters_of(gateway_url, bob, "PENDING,RUNNING,STOPPING,STOPPED,FAILED"), \
        "bob must not see alice's cluster in his list"
    base = f"{gateway_url}/api/v1/clusters/{alice_cluster}"
    for method, url, body in (("GET", base, None), ("POST", f"{base}/scale", {"count": 2}),
                              ("POST", f"{base}/adapt", {"minimum": 0, "maximum": 2}), ("DELETE", base, None)):
        r = as_user(bob, method, url, json=body)
        assert r.status_code == 403, f"bob's {method} {url.rsplit('/', 1)[-1]} must be refused: {r.status_code}"
    # bob's notebook (its own environment and token) tries to attach to alice's cluster
    refused = run_as_notebook(bob_env, ATTACH, alice_cluster, cwd=tmp_path)
    assert refused.returncode == 3 and "refused access" in refused.stdout, refused.stdout + refused.stderr[-2000:]
    alice = user_token(fac, admin_token, "alice")
    assert clusters_of(gateway_url, alice)[alice_cluster]["status"] == "RUNNING", \
        "alice's cluster must still run after bob's attempts"


def test_the_hubs_token_for_the_cluster_is_deleted_after_use(dask_facility, admin_token):
    def leftovers(username: str) -> list[dict]:
        tokens = admin_api(dask_facility.hub_url, admin_token, f"/users/{username}/tokens").json()["api_tokens"]
        return [t for t in tokens if t["note"] == NOTE]

    # the hub keeps its token only until the cluster runs and is scaled
    wait_until(lambda: not leftovers("alice") and not leftovers("bob"),
               "deletion of the hub's cluster tokens for alice and bob")


def test_stopping_the_server_shuts_the_cluster_down(dask_facility, admin_token, gateway_url):
    fac = dask_facility
    env = server_environ(admin_api(fac.hub_url, admin_token, "/users/alice").json())
    name = env["CASA_DASK_CLUSTER"]
    schedulers = [p for p in psutil.process_iter(["cmdline"])
                  if "scheduler" in " ".join(p.info["cmdline"] or []) and _cluster_of(p) == name]
    assert schedulers, "alice's cluster must have a scheduler process before the stop"
    for proc in schedulers:  # the local backend starts clusters below the notebooks' priority
        assert proc.nice() == min(19, proc.parent().nice() + 10), "cluster processes must run niced"
    r = admin_api(fac.hub_url, admin_token, "/users/alice/server", method="DELETE")
    assert r.status_code in (202, 204), r.text
    wait_until(lambda: not admin_api(fac.hub_url, admin_token, "/users/alice").json()["servers"], "alice's stop")
    alice = user_token(fac, admin_token, "alice")
    assert name not in clusters_of(gateway_url, alice), "the cluster must stop with the server"
    assert clusters_of(gateway_url, alice, "STOPPING,STOPPED")[name]["status"] in ("STOPPING", "STOPPED")
    _, alive = psutil.wait_procs(schedulers, timeout=30)
    assert not alive, "the cluster's scheduler process must exit"


def _cluster_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("DASK_GATEWAY_CLUSTER_NAME")
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return None


# ---- the integration's lifecycle decisions against the same real gateway -------------------------
# Here the integration runs in the test process with a stand-in spawner; only its token source
# differs from the hub's: the hub's REST API instead of the hub's database (same user, same single
# scope, same lifetime, deleted after use). Everything else (gateway, auth via the hub) is real.

class StandInSpawner(LoggingConfigurable):
    def __init__(self, user: SimpleNamespace, **kw) -> None:
        super().__init__(**kw)
        self.user = user
        self.user_options: dict = {}
        self.events: list[str] = []

    def casa_progress(self, step: str, message: str, progress: int | None = None) -> None:
        self.events.append(message)


class RestTokenDask(DaskIntegration):
    hub_url = admin_token = ""

    def issue_token(self, lifetime: float) -> str:
        r = admin_api(self.hub_url, self.admin_token, f"/users/{self.parent.user.name}/tokens", method="POST",
                      json={"scopes": [SCOPE], "expires_in": int(lifetime), "note": NOTE})
        assert r.status_code == 201, r.text
        self.parent.user.issued[r.json()["token"]] = r.json()["id"]
        self.parent.user.issued_count += 1
        return r.json()["token"]

    def revoke_token(self, token: str) -> None:
        token_id = self.parent.user.issued.pop(token)
        admin_api(self.hub_url, self.admin_token, f"/users/{self.parent.user.name}/tokens/{token_id}", method="DELETE")


@pytest.fixture
def make_dask(dask_facility, admin_token):
    r = http_login(dask_facility.hub_url, "alice", dask_facility.password("alice"))[1]
    assert r.status_code == 200, "alice must exist in the hub to hold tokens"
    settings = json.loads((dask_facility.state_dir / "dask-gateway" / "settings.json").read_text())
    user = SimpleNamespace(name="alice", spawners={}, issued={}, issued_count=0)

    def make(server: str = "", **config) -> RestTokenDask:
        base = {"gateway_url": f"{dask_facility.hub_url}/services/dask-gateway",
                "gateway_api_url": f"http://127.0.0.1:{settings['http_port']}/services/dask-gateway",
                "proxy_address": f"gateway://127.0.0.1:{settings['tcp_port']}", "initial_workers": 0}
        cfg = Config({"DaskIntegration": dict(base, **config)})
        spawner = user.spawners[server] = StandInSpawner(user, config=cfg)
        dask = RestTokenDask(parent=spawner, config=cfg)
        dask.hub_url, dask.admin_token = dask_facility.hub_url, admin_token
        spawner._casa_integrations = [dask]
        return dask

    yield make
    assert not user.issued, "every token the integration obtained must have been deleted"


CTX = SpawnContext("alice", ["physicists"], "/nonexistent/tokens", "/nonexistent/config")


async def started(dask: DaskIntegration) -> str:
    await dask.prepare(CTX)
    assert dask.cluster_name, f"a cluster must have been created or reused; events: {dask.parent.events}"
    await asyncio.wait_for(dask._watch, 120)
    return dask.cluster_name


async def test_a_kept_cluster_is_reused_by_the_next_start_with_the_same_options(
        make_dask, dask_facility, admin_token, gateway_url):
    alice = user_token(dask_facility, admin_token, "alice")
    first = make_dask(shutdown_on_stop=False, cluster_options={"idle_timeout": 901})
    name = await started(first)
    assert f"Dask cluster: {name} is running" in first.parent.events
    status = await first.status("alice")  # what the "My facility" page shows
    assert status["state"] == "running" and status["name"] == name
    assert status["dashboard"] == f"{gateway_url}/clusters/{name}/status"
    await first.stopped()
    assert clusters_of(gateway_url, alice)[name]["status"] == "RUNNING", \
        "with shutdown_on_stop = False the cluster must outlive the server"

    other_options = make_dask(cluster_options={"idle_timeout": 902})
    other = await started(other_options)
    assert other != name, "a start asking for other options must not reuse the kept cluster"

    again = make_dask(cluster_options={"idle_timeout": 901})
    assert await started(again) == name and not again._created, "the next start must reuse the kept cluster"
    assert any(f"reusing {name}" in m for m in again.parent.events)
    await again.stopped()
    await other_options.stopped()
    active = clusters_of(gateway_url, alice)
    assert name not in active and other not in active, "shutdown_on_stop must stop the reused cluster too"


async def test_a_cluster_of_the_users_other_running_server_is_not_adopted(make_dask, dask_facility, admin_token,
                                                                          gateway_url):
    default = make_dask("", cluster_options={"idle_timeout": 903})
    named = make_dask("analysis", cluster_options={"idle_timeout": 903})
    first, second = await started(default), await started(named)
    assert first != second, "a named server must get its own cluster, not the default server's"
    await default.stopped()
    await named.stopped()
    assert not {first, second} & set(clusters_of(gateway_url, user_token(dask_facility, admin_token, "alice")))


async def test_an_idle_cluster_is_culled_and_get_client_says_so(make_dask, dask_facility, admin_token,
                                                                gateway_url, tmp_path):
    dask = make_dask(shutdown_on_stop=False, cluster_options={"idle_timeout": 2})
    name = await started(dask)
    alice = user_token(dask_facility, admin_token, "alice")
    wait_until(lambda: name not in clusters_of(gateway_url, alice), "culling of the idle cluster", timeout=90)
    env = dict(os.environ, JUPYTERHUB_API_TOKEN=alice, **dask.contribute(CTX).env)
    env.pop("DASK_CONFIG")
    gone = run_as_notebook(env, ATTACH, name, cwd=tmp_path)
    assert gone.returncode == 3 and "no longer available" in gone.stdout, gone.stdout + gone.stderr[-2000:]
    await dask.stopped()


async def test_without_a_gateway_the_server_starts_without_a_cluster(make_dask):
    dead = f"http://127.0.0.1:{free_port()}/services/dask-gateway"
    dask = make_dask(gateway_api_url=dead, connect_timeout=1.0)
    await dask.prepare(CTX)
    assert dask.cluster_name is None
    env = dask.contribute(CTX).env
    assert "CASA_DASK_CLUSTER" not in env and env["DASK_GATEWAY__ADDRESS"], \
        "the notebook still gets the gateway's settings, but no cluster name"
    assert any("unavailable" in m for m in dask.parent.events), dask.parent.events
    assert dask.parent.user.issued_count == 1 and dask.parent.user.issued == {}, \
        "the hub's token must have been used and deleted although the gateway did not answer"

    required = make_dask(gateway_api_url=dead, connect_timeout=1.0, required=True)
    with pytest.raises(IntegrationError, match="could not create your cluster"):
        await required.prepare(CTX)


# ---- dashboards: dask-gateway serves a cluster's dashboard to whoever has its name ---------------

def running_cluster(gateway_url: str, token: str) -> str:
    """A cluster of the token's user, created through the gateway's API, running with its dashboard routed."""
    r = as_user(token, "POST", f"{gateway_url}/api/v1/clusters/", json={"cluster_options": {}})
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    wait_until(lambda: as_user(token, "GET", f"{gateway_url}/api/v1/clusters/{name}").json()["dashboard_route"],
               f"the dashboard route of {name}", timeout=120)
    return name


def test_the_dashboard_answers_anyone_with_the_clusters_name_while_its_api_refuses_them(
        dask_facility, admin_token, gateway_url):
    """What the README says under "A Dask cluster per user": dask-gateway routes /clusters/<name>/ to the
    scheduler's dashboard without asking who calls (dask/dask-gateway#570); the name, a random UUID, is
    the only key, and it opens the dashboard, not the cluster's API. The pages asserted here are
    distributed's own (they exist without bokeh, which draws the interactive plots)."""
    fac = dask_facility
    for username in ("alice", "bob"):
        assert http_login(fac.hub_url, username, fac.password(username))[1].status_code == 200
    alice, bob = user_token(fac, admin_token, "alice"), user_token(fac, admin_token, "bob")
    name = running_cluster(gateway_url, alice)
    try:
        assert re.fullmatch(r"[0-9a-f]{32}", name), f"the name is a random UUID (128 bits): {name}"
        dashboard = f"{gateway_url}/clusters/{name}"
        for who, headers in (("no credential", {}), ("bob", {"Authorization": f"jupyterhub {bob}"})):
            page, identity, logs = (requests.get(f"{dashboard}/{path}", headers=headers, timeout=60)
                                    for path in ("status", "json/identity.json", "info/main/logs.html"))
            assert page.status_code == 200, f"{who}: the dashboard link of the My facility page"
            assert identity.status_code == 200 and identity.json()["type"] == "Scheduler", \
                f"{who} reads the scheduler's identity (addresses, workers): {identity.status_code}"
            assert logs.status_code == 200 and re.search(r"<title>\s*Logs\s*</title>", logs.text), \
                f"{who} reads the scheduler's log: {logs.status_code}"
            api = requests.get(f"{gateway_url}/api/v1/clusters/{name}", headers=headers, timeout=60)
            assert api.status_code == (403 if headers else 401), f"{who} at the cluster's API: {api.status_code}"
        assert requests.get(f"{dashboard}/api/v1", timeout=60).status_code == 404, \
            "distributed's HTTP API (retire_workers) is not served"
        other = name[:-1] + ("1" if name[-1] == "0" else "0")
        assert requests.get(f"{gateway_url}/clusters/{other}/status", timeout=60).status_code == 404, \
            "a name one character off opens nothing"
    finally:
        assert as_user(alice, "DELETE", f"{gateway_url}/api/v1/clusters/{name}").status_code == 204
