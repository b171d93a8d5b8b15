"""The real MLflow client in alice's notebook environment logs to a real ``mlflow server`` whose
auth app runs ``casa_hub.integrations.mlflow.server_auth:authenticate_request`` and trusts the real facility issuer.

The facility here has an ``mlflow`` grant and the MLflow integration enabled (extra hub config); the
server (``mlflow server --app-name basic-auth`` on 127.0.0.1, sqlite stores in a temporary directory,
tests/support/mlflow_server.py) fetches the hub's discovery document and JWKS over http on loopback.
The client runs as a separate process with the notebook server's own environment and the header
provider that casa_hub registers with MLflow; it takes commands on stdin so that one process can see
its token file replaced.

The facility and the server are ``shared_integrations_facility`` (tests/support/shared_facilities.py),
shared with test_integration_notebook.py and test_login_rejections.py; alice's server is stopped when
this module ends.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from facilities import stop_servers
from helpers import login_and_start_server, read_server_environ
from mlflow_server import AUDIENCE, MLFLOW_GRANT, MLflowServer
from traitlets.config import Config

from casa_hub.demo.facility import DemoFacility
from casa_hub.tokens.issuer import CasaTokenIssuer
from casa_hub.tokens.renewal.files import write_token_file

pytestmark = pytest.mark.e2e

CLIENT = """
import json, os, sys
import mlflow
from mlflow.exceptions import MlflowException

print("RESULT", json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    os.environ["CASA_MLFLOW_TOKEN_FILE"] = cmd["token_file"]
    try:
        mlflow.set_experiment(cmd["experiment"])
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", cmd["loss"])
        out = {"ok": True, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    except MlflowException as e:
        out = {"ok": False, "message": str(e)}
    print("RESULT", json.dumps(out), flush=True)  # MLflow prints to stdout too
"""


class Secret(str):
    """A token; its repr hides the value so that assertion messages never print it."""

    def __repr__(self) -> str:
        return f"<token {len(self)} chars>"


@pytest.fixture(scope="module")
def site(shared_integrations_facility):
    """The facility (hub with the mlflow grant and integration) and the MLflow server trusting it."""
    return shared_integrations_facility, shared_integrations_facility.mlflow_server


@pytest.fixture(scope="module")
def facility_site(site) -> DemoFacility:
    return site[0]


@pytest.fixture(scope="module")
def server(site) -> MLflowServer:
    return site[1]


@pytest.fixture(scope="module")
def alice(facility_site, admin_token) -> dict:
    """alice's running notebook server, started here: its environment and her real token files."""
    fac = facility_site
    stop_servers(fac, admin_token, "alice")  # a fresh server with fresh tokens
    model = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    token_dir = Path(env["CASA_TOKEN_DIR"])
    yield {"env": env, "token_dir": token_dir,
           "mlflow": Secret((token_dir / "mlflow.token").read_text()),
           "xcache": Secret((token_dir / "xcache.token").read_text())}
    stop_servers(fac, admin_token, "alice")


@pytest.fixture(scope="module")
def hub_key_issuer(facility_site) -> CasaTokenIssuer:
    """Signs with the hub's own key (read from the demo state): genuine tokens with chosen times."""
    cfg = Config()
    cfg.CasaTokenIssuer.issuer_url = facility_site.issuer_url
    cfg.CasaTokenIssuer.key_dir = str(facility_site.state_dir / "issuer-keys")
    cfg.CasaTokenIssuer.grants = {"mlflow": MLFLOW_GRANT}
    return CasaTokenIssuer(config=cfg)


class Client:
    """The real MLflow client in a process with alice's notebook environment."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        script = root / "client.py"
        script.write_text(CLIENT)
        env = dict(env, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=root, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.result() == {"ready": True}, "the MLflow client did not start"

    def log_run(self, experiment: str, token_file: Path, loss: float = 0.25) -> dict:
        self.proc.stdin.write(json.dumps({"experiment": experiment, "token_file": str(token_file),
                                          "loss": loss}) + "\n")
        self.proc.stdin.flush()
        return self.result()

    def result(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
        raise AssertionError(f"the MLflow client exited with {self.proc.wait(10)}")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def client(alice, tmp_path_factory):
    c = Client(tmp_path_factory.mktemp("mlflow-client"), alice["env"])
    yield c
    c.close()


def forged(token: str) -> Secret:
    """The same claims and the hub's kid, signed with a key the hub never published."""
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(token)["kid"]
    return Secret(jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                             headers={"kid": kid, "typ": "JWT"}))


def token_path(tmp_path: Path, name: str, token: str | None) -> Path:
    path = tmp_path / f"{name}.token"
    if token is not None:
        write_token_file(path, token)
    return path


def test_notebook_gets_tracking_uri_and_token_file_never_the_token(alice, server):
    env = alice["env"]
    assert env["MLFLOW_TRACKING_URI"] == server.url and env["CASA_MLFLOW_TRACKING_URI"] == server.url
    path = Path(env["CASA_MLFLOW_TOKEN_FILE"])
    assert path == alice["token_dir"] / "mlflow.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "MLFLOW_TRACKING_TOKEN" not in env
    leaked = [k for k, v in env.items() if alice["mlflow"] in v]
    assert not leaked, f"token value in the notebook's environment: {leaked}"
    claims = jwt.decode(alice["mlflow"], options={"verify_signature": False})
    assert (claims["sub"], claims["aud"], claims["scope"]) == ("alice", AUDIENCE, "mlflow.write")


def test_real_client_logs_a_run_with_the_facility_token(alice, client, server):
    result = client.log_run("alice-e2e", Path(alice["env"]["CASA_MLFLOW_TOKEN_FILE"]), loss=0.25)
    assert result["ok"], f"the MLflow client must log with alice's token: {result.get('message')}"
    run = server.api("GET", "runs/get", alice["mlflow"], params={"run_id": result["run_id"]})
    assert run.status_code == 200, run.text[:300]
    metrics = {m["key"]: m["value"] for m in run.json()["run"]["data"]["metrics"]}
    assert metrics == {"loss": 0.25}, "the run must be on the server with its metric"
    me = server.api("GET", "users/current", alice["mlflow"]).json()["user"]
    assert (me["username"], me["is_admin"]) == ("alice", False), "the token's sub is the MLflow user"
    # default_permission is READ: creating the run needed the MANAGE permission that MLflow grants
    # the experiment's creator, by the username the authorization function returned
    rename = server.api("POST", "experiments/update", alice["mlflow"],
                        json={"experiment_id": result["experiment_id"], "new_name": "alice-e2e"})
    assert rename.status_code == 200, "alice manages the experiment she created"


def test_another_users_token_reads_but_cannot_write_alices_experiment(alice, client, server, hub_key_issuer):
    done = client.log_run("alice-shared", Path(alice["env"]["CASA_MLFLOW_TOKEN_FILE"]))
    assert done["ok"], done.get("message")
    bob = Secret(hub_key_issuer.mint("bob", "mlflow", ["physicists"]).token)
    assert server.api("GET", "runs/get", bob, params={"run_id": done["run_id"]}).status_code == 200, (
        "default_permission READ lets bob read")
    write = server.api("POST", "runs/create", bob, json={"experiment_id": done["experiment_id"]})
    assert write.status_code == 403, "bob must not write into alice's experiment"


REFUSED = {  # case -> (token for the file, or None for no file; reason in the answer)
    "no token": (lambda a, i: None, None),
    "expired": (lambda a, i: Secret(i.mint("alice", "mlflow", ["physicists"], now=time.time() - 3600).token),
                "expired"),
    "foreign key": (lambda a, i: forged(a["mlflow"]), "bad_signature"),
    "wrong audience": (lambda a, i: a["xcache"], "wrong_audience"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_server_refuses_bad_tokens(alice, client, server, hub_key_issuer, tmp_path, case):
    make, reason = REFUSED[case]
    token = make(alice, hub_key_issuer)
    if case == "expired":
        same_key = jwt.get_unverified_header(token)["kid"] == jwt.get_unverified_header(alice["mlflow"])["kid"]
        assert same_key, "the expired token must be signed by the hub's own key: only its time is wrong"
    experiment = f"refused-{case.replace(' ', '-')}"
    result = client.log_run(experiment, token_path(tmp_path, "mlflow", token))
    assert not result["ok"], f"the server must refuse a request with {case}"
    assert "error code 401" in result["message"], result["message"][:400]
    if reason:
        assert f"({reason})" in result["message"], "the refusal says why"
    if token:
        assert token not in result["message"], "the refusal must not echo the token"
    raw = server.api("GET", "experiments/search", token, params={"max_results": 1})
    assert raw.status_code == 401 and raw.headers["WWW-Authenticate"].startswith('Bearer realm="mlflow"')
    absent = server.api("GET", "experiments/get-by-name", alice["mlflow"], params={"experiment_name": experiment})
    assert absent.status_code == 404, f"nothing may be created with {case}"


def test_a_replaced_token_file_is_used_by_the_next_request(alice, client, server, tmp_path):
    """The renewal agent replaces token files atomically; the same client process follows each change."""
    path = token_path(tmp_path, "mlflow", alice["mlflow"])
    first = client.log_run("alice-renewed", path, loss=1.0)
    assert first["ok"], first.get("message")

    write_token_file(path, forged(alice["mlflow"]))  # a bad token in place: the next request fails
    refused = client.log_run("alice-renewed", path, loss=2.0)
    assert not refused["ok"] and "error code 401" in refused["message"], (
        "the header provider must read the file again, not keep the token it read before")

    env = alice["env"]
    r = requests.post(f"{env['JUPYTERHUB_API_URL']}/casa/tokens/mlflow", timeout=30,
                      headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"})
    assert r.status_code == 200, f"the broker must renew alice's mlflow token: {r.status_code}"
    renewed = Secret(r.json()["token"])
    write_token_file(path, renewed)  # what the renewal agent does with a fresh token
    second = client.log_run("alice-renewed", path, loss=3.0)
    assert second["ok"], f"the renewed token must be accepted at once: {second.get('message')}"
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in (alice["mlflow"], renewed)}
    assert len(jtis) == 2, "the accepted second run used a different token than the first"
    search = server.api("POST", "runs/search", renewed, json={"experiment_ids": [first["experiment_id"]]})
    losses = sorted(m["value"] for run in search.json()["runs"] for m in run["data"]["metrics"])
    assert losses == [1.0, 3.0], "the runs logged with valid tokens are there; the refused one is not"


def test_no_token_value_in_server_or_hub_logs(facility_site, alice, server, hub_key_issuer):
    expired = Secret(hub_key_issuer.mint("alice", "mlflow", ["physicists"], now=time.time() - 3600).token)
    assert server.api("GET", "users/current", alice["mlflow"]).status_code == 200
    assert server.api("GET", "users/current", expired).status_code == 401
    assert server.api("GET", "users/current", alice["xcache"]).status_code == 401
    server_log = server.log()
    assert "refused a facility token for /api/2.0/mlflow/users/current: expired" in server_log, (
        "refusals are logged with their reason")
    hub_log = (facility_site.log_dir / "hub.log").read_text(errors="replace")
    for name, token in (("alice's mlflow token", alice["mlflow"]), ("the expired token", expired),
                        ("alice's xcache token", alice["xcache"])):
        assert token not in server_log, f"{name} is in the MLflow server's log"
        assert token not in hub_log, f"{name} is in the hub's log"
