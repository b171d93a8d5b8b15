"""The physicist's first day on the embedded facility: sign in, the server starts with a Dask cluster,
the example notebook is in the home directory, and the notebook's own code (no set-up) reads the sample
data set by name, runs the ttbar selection on the cluster's workers and logs the result to MLflow as
the user. The histograms are compared with an independent computation on the same files.

Real here: provider, hub, proxy, the notebook server process and its environment, Dask Gateway with
local workers, the demo's data cache (a real XRootD origin and XCache verifying alice's own storage token
against the hub's published issuer), the MLflow server with casa_hub's auth plugin.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import requests
from facilities import stop_servers
from helpers import admin_api, http_login, login_and_start_server, read_server_environ
from shared_facilities import ANALYSIS_EVENTS, ANALYSIS_FILES, ANALYSIS_TOKEN_LIFETIME

from casa_hub.analysis.sample import SAMPLE_FILE
from casa_hub.common.files import write_private

pytest.importorskip("coffea")
pytest.importorskip("dask_gateway_server")

# its subject is the analysis stack on the facility; the hub's part (sign-in, spawn, broker) is in the modules
# the JupyterHub 5 run repeats
pytestmark = pytest.mark.one_hub_version

FILES, EVENTS = ANALYSIS_FILES, ANALYSIS_EVENTS
#: the notebook's cells, as a physicist runs them (examples/ttbar_analysis.ipynb), then a summary line
NOTEBOOK_CODE = """
import json
from casa_hub.analysis import fileset, log_to_mlflow, run
from casa_hub.analysis.ttbar import Cuts
from casa_hub.dask import get_client

client = get_client()
files = fileset(["ttbar"])
# loose cuts: the small sample fills both regions (tests/unit/test_analysis.py LOOSE)
loose = Cuts(jet_pt=15, lepton_pt=10, btag=0.2, electron_id=0, muon_tight_id=False, muon_iso=1e9)
result = run(files, client=client, cuts=loose)
logged = log_to_mlflow(result)

def worker_facts(dask_worker):  # on each worker: its environment, its files, its storage token
    import os
    files = [os.path.join(d, f) for top in {dask_worker.local_directory, os.getcwd()}
             for d, _, names in os.walk(top) for f in names]
    return {"environ": dict(os.environ), "files": files, "token_file": os.environ.get("BEARER_TOKEN_FILE", ""),
            "record": getattr(dask_worker, "casa_storage_token", None)}

import time
deadline = time.monotonic() + 60  # get_client() pushes alice's storage token to the workers
facts = client.run(worker_facts)
while not all(f["token_file"] for f in facts.values()) and time.monotonic() < deadline:
    time.sleep(0.5)
    facts = client.run(worker_facts)
print("RESULT " + json.dumps({
    "worker_facts": facts,
    "events": result["events"], "files": sorted(files["ttbar"]["files"]), "cutflow": result["cutflow"]["ttbar"],
    "ht": result["histograms"]["ht_4j1b"][{"dataset": "ttbar"}].values(flow=True).tolist(),
    "mbjj": result["histograms"]["mbjj_4j2b"][{"dataset": "ttbar"}].values(flow=True).tolist(),
    "logged": str(logged), "workers": len(client.scheduler_info()["workers"]),
}))
"""


@pytest.fixture(scope="module")
def fac(shared_analysis_facility, admin_token):
    """The shared analysis facility; alice's server (and so her cluster) stops when the module ends."""
    yield shared_analysis_facility
    stop_servers(shared_analysis_facility, admin_token, "alice")


def test_the_example_analysis_runs_from_the_notebook_environment(fac, admin_token, tmp_path):
    user = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    env = read_server_environ(user["servers"][""]["state"]["pid"])
    home = fac.state_dir / "homes" / "alice"
    assert (home / "ttbar_analysis.ipynb").exists(), "the example notebook is in alice's home"
    assert "JUPYTERHUB_API_TOKEN" in env and "MLFLOW_TRACKING_URI" in env and "CASA_FILESET" in env
    cache = fac.data_cache
    assert env["CASA_XCACHE_URL"] == cache.url and env["X509_CERT_DIR"] == str(cache.ca_dir)
    logins = cache.xrootd_log("cache").count("login as alice")

    run = subprocess.run([sys.executable, "-c", NOTEBOOK_CODE], env=env, cwd=home, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["events"] == FILES * EVENTS, "every event of the data set was processed"
    assert got["workers"] >= 1, "the analysis ran on the cluster's workers"
    # read through the cache by dataset name, as alice: the cache checked her token and now holds the files
    prefix = f"{cache.url}//store/data/ttbar/"
    assert len(got["files"]) == FILES and all(u.startswith(prefix) for u in got["files"]), got["files"]
    paths = [u[len(cache.url) + 1:] for u in got["files"]]
    assert cache.xrootd_log("cache").count("login as alice") > logins, "the cache saw alice's token"
    cached = cache.server_dir("cache") / "data"
    assert all((cached / p.lstrip("/")).exists() for p in paths), "the cache holds what was read"

    expected = independent_histograms([str(fac.state_dir / "data" / p.lstrip("/")) for p in paths])
    assert got["cutflow"] == expected["cutflow"], "same cut flow as uproot directly"
    assert got["ht"] == expected["ht_4j1b"].tolist() and got["mbjj"] == expected["mbjj_4j2b"].tolist(), \
        "same histograms as uproot directly"
    assert sum(got["ht"]) > 0 and sum(got["mbjj"]) > 0, "both regions are filled"

    # MLflow holds alice's run, with the metrics and the histogram
    assert "NOT logged" not in got["logged"], got["logged"]
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    token = s.post(f"{fac.hub_url}/hub/api/casa/tokens/mlflow", headers={"X-XSRFToken": s.cookies.get("_xsrf", "")},
                   timeout=30).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    found = requests.post(f"{fac.mlflow_url}/api/2.0/mlflow/runs/search", headers=headers, timeout=30,
                          json={"experiment_ids": experiment_ids(fac, headers)}).json()["runs"]
    assert found, "a run in MLflow"
    run_info = found[0]
    metrics = {m["key"]: m["value"] for m in run_info["data"]["metrics"]}
    assert metrics.get("events_processed") == FILES * EVENTS, metrics
    assert run_info["info"]["user_id"] == "alice", "the run is alice's"
    artifacts = requests.get(f"{fac.mlflow_url}/api/2.0/mlflow/artifacts/list", headers=headers, timeout=30,
                             params={"run_id": run_info["info"]["run_id"], "path": "histograms"}).json().get("files", [])
    assert any(a["path"].endswith(".png") for a in artifacts), artifacts
    assert admin_api(fac.hub_url, admin_token, "/users/alice").status_code == 200

    # the workers read as alice: her storage token (pushed by get_client), and no hub credential at all
    token_dir = Path(env["CASA_TOKEN_DIR"])
    xcache = (token_dir / "xcache.token").read_text().strip()
    for address, w in got["worker_facts"].items():
        assert w["token_file"] and w["record"]["outcome"] == "replaced", (address, w["record"])
        claims = jwt.decode(Path(w["token_file"]).read_text(), options={"verify_signature": False})
        assert claims["sub"] == "alice" and claims["aud"] == jwt.decode(
            xcache, options={"verify_signature": False})["aud"], claims
        assert not Path(w["token_file"]).is_relative_to(token_dir), "a worker has its own copy"
        hub_vars = [k for k, v in w["environ"].items() if k.startswith(("JUPYTERHUB_", "JPY_"))
                    or env["JUPYTERHUB_API_TOKEN"] in v]
        assert hub_vars == [], f"{address} has hub credentials in its environment: {hub_vars}"
        holding = [f for f in w["files"] if Path(f).is_file()
                   and env["JUPYTERHUB_API_TOKEN"].encode() in Path(f).read_bytes()]
        assert holding == [], f"{address} has the hub token in {holding}"


def experiment_ids(fac, headers: dict) -> list[str]:
    r = requests.post(f"{fac.mlflow_url}/api/2.0/mlflow/experiments/search", headers=headers, timeout=30,
                      json={"max_results": 100})
    return [e["experiment_id"] for e in r.json().get("experiments", [])]


def independent_histograms(paths: list[str]) -> dict:
    """The same selection with the unit tests' own uproot implementation (tests/unit/test_analysis.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    try:
        import test_analysis as unit
    finally:
        sys.path.pop(0)
    return unit.reference([Path(p) for p in paths], unit.LOOSE)


def xrdcp(cache, token: str, path: str, scratch: Path) -> subprocess.CompletedProcess:
    """``xrdcp root://<cache>/<path>`` with ``token`` in a 0600 ``BEARER_TOKEN_FILE`` (never in argv)."""
    token_file = write_private(scratch / f"token-{secrets.token_hex(4)}", token)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "X509_CERT_DIR": str(cache.ca_dir),
           "BEARER_TOKEN_FILE": str(token_file), "XRD_REQUESTTIMEOUT": "30"}
    return subprocess.run(["xrdcp", "--nopbar", "-f", f"{cache.url}/{path}", "-"], env=env, capture_output=True,
                          timeout=60)


def broker(fac, user: str, grant: str) -> str:
    s, r = http_login(fac.hub_url, user, fac.password(user))
    assert r.status_code == 200
    r = s.post(f"{fac.hub_url}/hub/api/casa/tokens/{grant}", headers={"X-XSRFToken": s.cookies.get("_xsrf", "")},
               timeout=30)
    assert r.status_code == 200, r.text[:200]
    return r.json()["token"]


@pytest.mark.skipif(not shutil.which("xrdcp"), reason="xrdcp (Debian xrootd-client) is not installed")
def test_each_user_reads_their_own_directory_and_the_data_set_but_not_another_users(fac, tmp_path):
    """The demo's cache: alice reads /store/user/alice and /store/data; bob's token (bob is also a facility
    admin: his everyday storage token is a physicist's) is refused alice's directory, and reads his own."""
    alice, bob = broker(fac, "alice", "xcache"), broker(fac, "bob", "xcache")
    own = "/store/user/alice/sample/nano.root"
    expected = (fac.state_dir / "data" / own.lstrip("/")).read_bytes()
    r = xrdcp(fac.data_cache, alice, own, tmp_path)
    assert r.returncode == 0 and r.stdout == expected, r.stderr[-500:]
    data_file = sorted((fac.state_dir / "data" / "store" / "data" / "ttbar").glob("*.root"))[0]
    r = xrdcp(fac.data_cache, alice, f"/store/data/ttbar/{data_file.name}", tmp_path)
    assert r.returncode == 0 and r.stdout == data_file.read_bytes(), r.stderr[-500:]
    r = xrdcp(fac.data_cache, bob, own, tmp_path)
    assert r.returncode != 0 and r.stdout == b"" and b"permission denied" in r.stderr.lower(), r.stderr[-500:]
    r = xrdcp(fac.data_cache, bob, "/store/user/bob/sample/nano.root", tmp_path)
    assert r.returncode == 0 and r.stdout == SAMPLE_FILE.read_bytes(), r.stderr[-500:]
    r = xrdcp(fac.data_cache, "not-a-token", own, tmp_path)
    assert r.returncode != 0 and r.stdout == b"", "no valid token, no data"


#: one analysis that outlives alice's storage token: calibrated on a first run, then the data set many times over
LONG_CODE = """
import json, math, os, time
import jwt
from casa_hub.analysis import fileset, run
from casa_hub.analysis.ttbar import Cuts
from casa_hub.dask import get_client

def claims():
    return jwt.decode(open(os.environ["BEARER_TOKEN_FILE"]).read(), options={"verify_signature": False})

def worker_jtis():
    return sorted({(w.get("record") or {}).get("jti") for w in client.run(
        lambda dask_worker: {"record": getattr(dask_worker, "casa_storage_token", None)}).values()} - {None})

loose = Cuts(jet_pt=15, lepton_pt=10, btag=0.2, electron_id=0, muon_tight_id=False, muon_iso=1e9)
client = get_client()
files = fileset(["ttbar"])
first = run(files, client=client, cuts=loose, chunksize=100)  # cold: the cache fetches the files
t0 = time.time()
run(files, client=client, cuts=loose, chunksize=100)  # warm, as every copy below is: the time of one copy
one = time.time() - t0
token = claims()
# long enough to outlive this token by ~30 s at this pace (the test needs 5 s: room for a faster machine)
copies = math.ceil((token["exp"] - time.time() + 30) / max(one, 0.5))
big = {f"ttbar-{i}": files["ttbar"] for i in range(copies)}
before = worker_jtis()
started = time.time()
result = run(big, client=client, cuts=loose, chunksize=100)
ended = time.time()
print("RESULT " + json.dumps({
    "first_exp": token["exp"], "first_jti": token["jti"], "started": started, "ended": ended, "copies": copies,
    "events": result["events"], "one_events": first["events"], "one_cutflow": first["cutflow"]["ttbar"],
    "cutflows": [result["cutflow"][k] for k in big], "workers_before": before, "workers_after": worker_jtis(),
    "notebook_jti_after": claims()["jti"],
}))
"""


@pytest.mark.slow(70)  # longer than a 60 s token
def test_an_analysis_longer_than_the_storage_token_lifetime_completes(fac, admin_token, tmp_path):
    """One analysis runs past the expiry of the storage token it started with (lifetime
    ``ANALYSIS_TOKEN_LIFETIME``): the notebook's agent renews the token, ``get_client()`` pushes it to the
    workers, and every chunk read through the cache succeeds."""
    user = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    env = read_server_environ(user["servers"][""]["state"]["pid"])
    run = subprocess.run([sys.executable, "-c", LONG_CODE], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert got["ended"] > got["first_exp"] + 5 and got["ended"] - got["started"] > 0, \
        f"the analysis must outlive its first token: {got}"
    assert got["first_exp"] - got["started"] <= ANALYSIS_TOKEN_LIFETIME
    assert got["events"] == got["copies"] * got["one_events"] == got["copies"] * FILES * EVENTS, \
        "every event of every copy was read through the cache"
    assert all(c == got["one_cutflow"] for c in got["cutflows"]), "each copy gives the same cut flow"
    assert got["notebook_jti_after"] != got["first_jti"], "the notebook's storage token was renewed"
    assert got["workers_after"] and got["first_jti"] not in got["workers_after"], \
        f"the workers hold the renewed token: {got['workers_before']} -> {got['workers_after']}"
