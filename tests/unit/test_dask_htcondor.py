"""HTCondorBackend and its submit descriptions, checked with the real htcondor2/classad2 bindings.

What is real: the ``htcondor2``/``classad2`` bindings (parsing and evaluating every description and
expression), the facility issuer (tokens minted with the hub's keys and verified against the hub's
published JWKS), JupyterHub (the gateway authenticates alice through it) and dask-gateway-server
running ``HTCondorBackend``. What is not: HTCondor's daemons cannot run here (no schedd, collector
or startd), so ``condor_submit``, ``condor_rm`` and ``condor_q`` are a recording stand-in
(tests/test_dask_htcondor_recorder.py) that captures exactly the command line, environment, submit
description and files each command was handed. Not exercised: the schedd accepting the token and
mapping it to the user, spooling, matchmaking, the container universe, file transfer to an
execute node, and the jobs themselves (the same job commands run for real on Slurm in
tests/test_dask_slurm.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import classad2
import htcondor2
import jwt
import pytest
import requests
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import Cluster, JobStatus, Worker
from dask_gateway_server.models import User
from dask_gateway_server.tls import new_keypair
from dask_gateway_server.utils import FrozenAttrDict
from helpers import admin_api, http_login, verify_with_published_jwks
from test_dask_htcondor_recorder import install_recorder, read_records
from traitlets.config import Config

from casa_hub.common.ports import free_port
from casa_hub.dask import htcondor_submit as hs
from casa_hub.dask.htcondor import HTCondorBackend, HTCondorClusterConfig
from casa_hub.tokens.issuer import IssuerError

VENV_BIN = Path(sys.executable).parent
IMAGE = "docker://registry.casa.test/casa/worker:2026.1"
REQUIREMENTS = '(TARGET.OpSysAndVer == "AlmaLinux9") && (TARGET.HasDocker =?= true)'
SCHEDD, POOL = "schedd.casa.test", "cm.casa.test"
COMPUTE_AUDIENCE, CACHE_AUDIENCE = "casa-demo-htcondor", "casa-demo-xcache"
GRANTS = {  # the demo hub's grants (casa_hub/demo/jupyterhub_config.py)
    "xcache": {"audience": CACHE_AUDIENCE, "scopes": ["storage.read:/user/{username}"], "lifetime": 1200,
               "groups": ["physicists"]},
    "htcondor": {"audience": COMPUTE_AUDIENCE, "scopes": ["compute.read", "compute.create", "compute.modify",
                                                          "compute.cancel"], "groups": ["physicists"]},
}


def worker_spec(**overrides) -> hs.JobSpec:
    spec = dict(executable="/srv/jobs/w1/casa-dask-job.sh", input_files=["/srv/jobs/w1/dask-gateway.env",
                "/srv/jobs/w1/casa-storage.token"], cpus=2, memory_bytes=3 * 2**30, disk_bytes=2**30,
                walltime=3600, batch_name="dask-gateway-c1", cluster_name="c1", role="worker", username="alice",
                image=IMAGE, requirements=REQUIREMENTS, accounting_group="group_physics.alice",
                not_after=int(time.time()) + 600)
    spec.update(overrides)
    return hs.JobSpec(**spec)


def machine(**attrs) -> classad2.ClassAd:
    return classad2.ClassAd({"OpSysAndVer": "AlmaLinux9", "HasDocker": True, **attrs})


def job_matches(requirements: str, machine_ad: classad2.ClassAd) -> bool:
    """Whether a job with these requirements matches the machine (evaluated by classad2)."""
    return machine_ad.matches(classad2.ClassAd({"Requirements": classad2.ExprTree(requirements)}))


# ---- submit descriptions (bindings only) --------------------------------------------------------


def test_worker_description_parses_and_its_expressions_evaluate_in_htcondor2():
    desc = hs.submit_description(worker_spec())
    again = htcondor2.Submit(str(desc))  # what condor_submit reads back from stdin
    assert dict(again) == dict(desc)
    assert again["universe"] == "container" and again["container_image"] == IMAGE
    assert again["getenv"] == "False" and again["transfer_executable"] == "True"
    assert again["transfer_input_files"] == "/srv/jobs/w1/dask-gateway.env, /srv/jobs/w1/casa-storage.token"
    assert again["request_cpus"] == "2" and again["request_memory"] == "3072" and again["request_disk"] == "1048576"
    assert again["allowed_job_duration"] == "3600"
    assert again["accounting_group"] == "group_physics.alice" and again["accounting_group_user"] == "alice"
    assert again["MY.DaskGatewayCluster"] == '"c1"' and again["MY.DaskGatewayRole"] == '"worker"'
    # the site's requirements AND "not after the token could no longer cover the walltime"
    assert job_matches(again["requirements"], machine())
    assert not job_matches(again["requirements"], machine(OpSysAndVer="CentOS7"))
    assert not job_matches(again["requirements"], machine(HasDocker=False))
    late = hs.submit_description(worker_spec(not_after=int(time.time()) - 1))["requirements"]
    assert not job_matches(late, machine()), "a worker whose token window has passed must not match"
    remove = classad2.ExprTree(hs.submit_description(worker_spec(not_after=int(time.time()) - 1))["periodic_remove"])
    assert remove.eval(classad2.ClassAd({"JobStatus": 1})) is True, "an idle job past its window is removed"
    assert remove.eval(classad2.ClassAd({"JobStatus": 2})) is False, "a running job is left alone"


def test_singularity_image_and_scheduler_without_token_window():
    desc = hs.submit_description(worker_spec(image="/cvmfs/unpacked.cern.ch/casa/worker:2026", image_kind="singularity",
                                             role="scheduler", not_after=None))
    assert desc["universe"] == "vanilla" and desc["MY.SingularityImage"] == '"/cvmfs/unpacked.cern.ch/casa/worker:2026"'
    assert "container_image" not in desc and "periodic_remove" not in desc
    assert desc["requirements"] == f"({REQUIREMENTS})"


@pytest.mark.parametrize("overrides, message", [
    ({"image": "docker://x/y:1\nexecutable = /bin/evil"}, "image"),
    ({"requirements": "(Arch == "}, "not a valid ClassAd expression"),
    ({"requirements": "true\nqueue 100"}, "single-line"),
    ({"username": "alice bob"}, "username"),
    ({"accounting_group": "group physics"}, "accounting_group"),
    ({"input_files": ["/srv/a.token, /etc/shadow"]}, "plain absolute path"),
    ({"executable": "relative.sh"}, "plain absolute path"),
    ({"extra": {"executable": "/bin/evil"}}, "managed name"),
    ({"extra": {"+Project": '"x"\nqueue 9'}}, "one line"),
    ({"image_kind": "docker"}, "image_kind"),
])
def test_unsafe_values_never_reach_a_description(overrides, message):
    with pytest.raises(hs.SubmitDescriptionError, match=message):
        hs.submit_description(worker_spec(**overrides))


def test_bad_site_settings_stop_the_cluster_config():
    with pytest.raises(hs.SubmitDescriptionError, match="requirements"):
        HTCondorClusterConfig(requirements="foo(")
    for bad in ("group physics.{username}", "group_physics.{user}"):
        with pytest.raises(ValueError, match="accounting_group"):
            HTCondorClusterConfig(accounting_group=bad)
    with pytest.raises(ValueError, match="walltime"):
        HTCondorClusterConfig(worker_walltime="a while")
    good = HTCondorClusterConfig(requirements=REQUIREMENTS, accounting_group="group_physics.{username}")
    assert good.requirements == REQUIREMENTS and good.accounting_group == "group_physics.{username}"


def test_condor_output_parsing():
    assert hs.parse_terse("4242.0 - 4242.0\n") == "4242.0"
    with pytest.raises(ValueError, match="unexpected condor_submit output"):
        hs.parse_terse("ERROR: Failed to connect to local queue manager\n")
    assert hs.parse_states("1.0 1\n2.0 2\n3.0 5\n4.0 4\n5.0 6\n") == {
        "1.0": True, "2.0": True, "3.0": False, "4.0": False, "5.0": True}


# ---- the backend's worker jobs, in process, with the hub's keys ---------------------------------


def backend_config(facility, staging: Path, **cluster) -> Config:
    c = Config()
    c.HTCondorBackend.api_url = "https://gateway.casa.test/api"
    c.HTCondorBackend.schedd_name = SCHEDD
    c.HTCondorBackend.pool = POOL
    c.HTCondorBackend.staging_root = str(staging)
    c.HTCondorClusterConfig.image = IMAGE
    c.HTCondorClusterConfig.requirements = REQUIREMENTS
    c.HTCondorClusterConfig.accounting_group = "group_physics.{username}"
    c.HTCondorClusterConfig.job_venv = "/opt/casa/venv"
    c.HTCondorClusterConfig.worker_walltime = "00:10:00"
    for key, value in cluster.items():
        setattr(c.HTCondorClusterConfig, key, value)
    c.CasaTokenIssuer.issuer_url = facility.issuer_url
    c.CasaTokenIssuer.key_dir = str(facility.state_dir / "issuer-keys")
    c.CasaTokenIssuer.grants = GRANTS
    return c


def make_cluster(backend: HTCondorBackend, username: str, groups: list[str]) -> Cluster:
    config = backend.cluster_config_class(parent=backend)
    config.casa_groups = groups
    cert, key = new_keypair("c1")
    return Cluster(name="c1", username=username, token="cluster-api-token-" + "7" * 32,
                   config=FrozenAttrDict(config.to_dict()), tls_cert=cert, tls_key=key,
                   scheduler_address="tls://10.0.0.5:8786", status=JobStatus.RUNNING, target=JobStatus.RUNNING)


@pytest.mark.e2e
async def test_worker_job_carries_its_own_storage_token_as_a_file(facility, tmp_path):
    backend = HTCondorBackend(config=backend_config(facility, tmp_path / "staging"))
    cluster = make_cluster(backend, "alice", ["physicists"])
    cmd, env, stdin = backend.get_submit_cmd_env_stdin(cluster, Worker(name="w1", cluster=cluster, status=JobStatus.CREATED))
    assert cmd == [backend.submit_command, "-terse", "-spool", "-name", SCHEDD, "-pool", POOL]
    assert env == {"PATH": os.environ["PATH"]}  # the user's credential is added per command (run_as_user)
    desc = htcondor2.Submit(stdin)
    job_dir = tmp_path / "staging" / "c1" / "w1"
    assert desc["executable"] == str(job_dir / "casa-dask-job.sh")
    inputs = desc["transfer_input_files"].split(", ")
    assert inputs == [str(job_dir / n) for n in ("dask-gateway.env", "dask.crt", "dask.pem", "casa-storage.token")]
    for path in inputs:
        assert Path(path).stat().st_mode & 0o777 == 0o600, path
    assert job_dir.stat().st_mode & 0o777 == 0o700
    # the storage token: alice's, for the cache, verifiable with the hub's published keys
    token = (job_dir / "casa-storage.token").read_text()
    claims = verify_with_published_jwks(token, facility.issuer_url, CACHE_AUDIENCE)
    assert claims["sub"] == "alice" and claims["scope"] == "storage.read:/user/alice"
    not_after = claims["exp"] - 600 - 300  # walltime and margin
    assert desc["requirements"] == f"({REQUIREMENTS}) && (time() <= {not_after})"
    assert desc["periodic_remove"] == f"(JobStatus == 1) && (time() > {not_after})"
    assert desc["allowed_job_duration"] == "600"
    assert desc["accounting_group"] == "group_physics.alice" and desc["accounting_group_user"] == "alice"
    # the job script points at the token by path; secrets are in the 0600 env file, not the description
    script = (job_dir / "casa-dask-job.sh").read_text()
    assert 'export BEARER_TOKEN_FILE="$PWD/casa-storage.token"' in script
    assert "exec /opt/casa/venv/bin/dask worker tls://10.0.0.5:8786" in script
    env_file = (job_dir / "dask-gateway.env").read_text()
    assert f"DASK_GATEWAY_API_TOKEN={cluster.token}" in env_file
    for secret in (token, cluster.token, cluster.tls_key.decode()):
        assert secret not in stdin and secret not in " ".join(cmd) and secret not in script


@pytest.mark.e2e
async def test_tokens_follow_the_users_groups_and_the_walltime(facility, tmp_path):
    backend = HTCondorBackend(config=backend_config(facility, tmp_path / "staging"))
    eve = make_cluster(backend, "eve", ["visitors"])  # not in the grants' groups
    with pytest.raises(IssuerError, match="may not receive grant 'xcache'"):
        backend.get_submit_cmd_env_stdin(eve, Worker(name="w1", cluster=eve, status=JobStatus.CREATED))
    # a cluster whose workers would outlive their tokens is refused when it is created
    long = HTCondorBackend(config=backend_config(facility, tmp_path / "long", worker_walltime="01:00:00"))
    with pytest.raises(PublicException, match=r"'xcache' token lives 1200 s .* walltime of 01:00:00"):
        await long.process_cluster_options(User("alice", groups=["physicists"]), {})
    options, config = await backend.process_cluster_options(User("alice", groups=["physicists"]), {})
    assert config.casa_groups == ["physicists"], "tokens are minted for the groups the hub reported"
    # with the workers' tokens renewed over Dask, the walltime is not bounded by the token lifetime,
    # and a job is not held back (no start window): its first token comes with it as before
    renewed = HTCondorBackend(config=backend_config(facility, tmp_path / "renewed", worker_walltime="04:00:00",
                                                     token_renewal=True))
    _, rconfig = await renewed.process_cluster_options(User("alice", groups=["physicists"]), {})
    cluster = make_cluster(renewed, "alice", ["physicists"])
    _, _, stdin = renewed.get_submit_cmd_env_stdin(cluster, Worker(name="w1", cluster=cluster, status=JobStatus.CREATED))
    desc = htcondor2.Submit(stdin)
    assert rconfig.token_renewal and desc["allowed_job_duration"] == str(4 * 3600)
    assert "periodic_remove" not in desc and "time()" not in desc["requirements"]
    assert (tmp_path / "renewed" / "c1" / "w1" / "casa-storage.token").stat().st_mode & 0o777 == 0o600
    # a user without the compute grant learns it when creating the cluster, not at the first job
    with pytest.raises(PublicException, match="your groups do not allow 'htcondor' tokens"):
        await backend.process_cluster_options(User("eve", groups=["visitors"]), {})


# ---- the real gateway: what condor_submit / condor_rm / condor_q are handed ---------------------

GATEWAY_CONFIG = """\
c = get_config()  # noqa: F821
c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "casa_hub.dask.htcondor.HTCondorBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = "{hub_api}"
c.HTCondorBackend.submit_command = "{condor_submit}"
c.HTCondorBackend.cancel_command = "{condor_rm}"
c.HTCondorBackend.status_command = "{condor_q}"
c.HTCondorBackend.schedd_name = "{schedd}"
c.HTCondorBackend.pool = "{pool}"
c.HTCondorBackend.condor_config = "{condor_config}"
c.HTCondorBackend.staging_root = "{staging}"
c.HTCondorBackend.cluster_status_period = 0.5
c.HTCondorClusterConfig.image = "{image}"
c.HTCondorClusterConfig.requirements = {requirements!r}
c.HTCondorClusterConfig.accounting_group = "group_physics.{{username}}"
c.HTCondorClusterConfig.job_venv = "/opt/casa/venv"
c.HTCondorClusterConfig.worker_walltime = "00:10:00"
c.HTCondorClusterConfig.scheduler_walltime = "02:00:00"
c.CasaTokenIssuer.issuer_url = "{issuer_url}"
c.CasaTokenIssuer.key_dir = "{key_dir}"
c.CasaTokenIssuer.grants = {grants!r}
"""


@pytest.fixture(scope="module")
def htcondor_gateway(facility, tmp_path_factory):
    """dask-gateway-server with HTCondorBackend on 127.0.0.1; HTCondor commands are recorded."""
    d = tmp_path_factory.mktemp("htcondor-gateway")
    os.chmod(d, 0o700)
    log = d / "records.jsonl"
    tools = install_recorder(d / "bin", log)
    (d / "condor_config").write_text("# the pool's client configuration would be here\n")
    ports = {"api_port": free_port(), "proxy_port": free_port()}
    cfg = d / "dask_gateway_config.py"
    cfg.write_text(GATEWAY_CONFIG.format(
        **ports, hub_api=f"{facility.hub_url}/hub/api", **tools, schedd=SCHEDD, pool=POOL,
        condor_config=d / "condor_config", staging=d / "staging", image=IMAGE, requirements=REQUIREMENTS,
        issuer_url=facility.issuer_url, key_dir=facility.state_dir / "issuer-keys", grants=GRANTS))
    # the gateway's own service credential: must never reach an HTCondor command
    marker = "gateway-service-token-" + os.urandom(8).hex()
    env = {"PATH": os.environ["PATH"], "HOME": str(d), "JUPYTERHUB_API_TOKEN": marker}
    out = open(d / "gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(VENV_BIN / "dask-gateway-server"), "-f", str(cfg)], stdout=out,
                            stderr=subprocess.STDOUT, env=env, cwd=d, start_new_session=True)
    url = f"http://127.0.0.1:{ports['proxy_port']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (d / "gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dask-gateway-server did not become healthy"
            time.sleep(0.2)
        yield {"url": url, "log": log, "tools": tools, "dir": d, "marker": marker, "gateway_log": d / "gateway.log"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


@pytest.fixture(scope="module")
def alice_api_token(facility, admin_token) -> str:
    session, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["read:users:name!user=alice", "read:users:groups!user=alice"],
                        "note": "htcondor gateway test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def wait_for_record(log: Path, tool: str, count: int = 1, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in read_records(log) if r["tool"] == tool]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{tool} was not run within {timeout} s"
        time.sleep(0.2)


def claims_of(record: dict) -> dict:
    token = record["files"]["scitokens_file"]["content"]
    return jwt.decode(token, options={"verify_signature": False})


@pytest.mark.e2e
# dask_gateway.Gateway.__del__ closes a second time after close() and complains: upstream, harmless
@pytest.mark.filterwarnings("ignore:Exception ignored in. <function Gateway.__del__")
def test_gateway_submits_and_removes_the_scheduler_with_the_users_compute_token(
        facility, htcondor_gateway, alice_api_token):
    from dask_gateway import Gateway
    from dask_gateway.auth import JupyterHubAuth

    g = htcondor_gateway
    gateway = Gateway(g["url"], auth=JupyterHubAuth(api_token=alice_api_token))
    name = gateway.submit()
    submit = wait_for_record(g["log"], "condor_submit")[0]

    # exactly this command line and environment: paths only, the compute token from a file
    assert submit["argv"] == ["-terse", "-spool", "-name", SCHEDD, "-pool", POOL]
    token_file = submit["env"]["_CONDOR_SCITOKENS_FILE"]
    assert submit["env"] == {"PATH": os.environ["PATH"], "CONDOR_CONFIG": str(g["dir"] / "condor_config"),
                             "_CONDOR_SCITOKENS_FILE": token_file,
                             "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS"}
    assert re.fullmatch(rf"{g['dir']}/staging/{name}/compute-[0-9a-f]{{16}}\.token", token_file)
    compute = submit["files"]["scitokens_file"]
    assert compute["mode"] == "0o600"
    claims = verify_with_published_jwks(compute["content"], facility.issuer_url, COMPUTE_AUDIENCE)
    assert claims["sub"] == "alice", "jobs must be submitted as the user, not a pool identity"
    assert claims["scope"] == "compute.read compute.create compute.modify compute.cancel"

    # the scheduler's description, as condor_submit reads it
    desc = htcondor2.Submit(submit["stdin"])
    job_dir = f"{g['dir']}/staging/{name}/scheduler"
    assert desc["universe"] == "container" and desc["container_image"] == IMAGE
    assert desc["requirements"] == f"({REQUIREMENTS})", "the scheduler has no token window"
    assert desc["accounting_group"] == "group_physics.alice" and desc["accounting_group_user"] == "alice"
    assert desc["allowed_job_duration"] == "7200" and desc["getenv"] == "False"
    assert desc["transfer_input_files"].split(", ") == [f"{job_dir}/{n}" for n in ("dask-gateway.env", "dask.crt", "dask.pem")]
    files = submit["files"]
    assert all(files[p]["mode"] == "0o600" for p in desc["transfer_input_files"].split(", "))
    script = files[desc["executable"]]["content"]
    assert "exec /opt/casa/venv/bin/dask scheduler --protocol tls" in script and "BEARER_TOKEN_FILE" not in script
    assert f"DASK_GATEWAY_CLUSTER_NAME={name}" in files[f"{job_dir}/dask-gateway.env"]["content"]

    # no hub credential anywhere HTCondor could see: neither alice's nor the gateway's own
    handed = [submit["stdin"], " ".join(submit["argv"]), *submit["env"].values(),
              *(f["content"] for f in files.values() if f.get("exists"))]
    for secret in (alice_api_token, g["marker"]):
        assert not any(secret in text for text in handed)
    # -spool copied everything: the gateway keeps neither the job's files nor the compute token
    assert not Path(job_dir).exists() and not Path(token_file).exists()

    # the queue is read with the gateway's own identity, never a user's token
    status = wait_for_record(g["log"], "condor_q")[0]
    assert status["argv"] == ["-name", SCHEDD, "-pool", POOL, "-allusers", "-af:j", "JobStatus", "1.0"]
    assert "_CONDOR_SCITOKENS_FILE" not in status["env"]

    # stopping removes the job with a fresh compute token of the same user
    gateway.stop_cluster(name)
    remove = wait_for_record(g["log"], "condor_rm")[0]
    assert remove["argv"] == ["-name", SCHEDD, "-pool", POOL, "1.0"]
    assert remove["env"]["_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS"] == "SCITOKENS"
    rm_claims = claims_of(remove)
    assert rm_claims["sub"] == "alice" and rm_claims["jti"] != claims["jti"]
    assert not Path(remove["env"]["_CONDOR_SCITOKENS_FILE"]).exists()
    deadline = time.monotonic() + 30
    while Path(f"{g['dir']}/staging/{name}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"{g['dir']}/staging/{name}").exists(), "the cluster's staging directory was left"
    # every mint was audited in the gateway's log, never with the value
    gateway_log = g["gateway_log"].read_text(errors="replace")
    assert gateway_log.count("mint user=alice grant=htcondor") >= 2
    assert compute["content"] not in gateway_log
    gateway.close()
