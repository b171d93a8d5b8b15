"""FacilityHTCondorCluster: the scheduler in the notebook, workers as HTCondor jobs.

Real: dask-jobqueue and distributed (a TLS scheduler in this process), the hub's token broker (the
worker's storage token and the compute token come from it, with alice's own API token), the
``htcondor2`` bindings that parse the submit file. Not real: ``condor_submit``/``condor_rm`` are the
recording stand-in of tests/test_dask_htcondor_recorder.py (no schedd can run here), so no worker
starts; the test checks what HTCondor would be handed.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import htcondor2
import pytest
from helpers import admin_api, http_login, verify_with_published_jwks
from test_dask_htcondor_recorder import install_recorder, read_records

from casa_hub.common.files import write_private
from casa_hub.common.ports import free_port
from casa_hub.dask.jobqueue import BrokerTokenSource, FacilityHTCondorCluster

pytestmark = pytest.mark.e2e

IMAGE = "docker://registry.casa.test/casa/worker:2026.1"
REQUIREMENTS = '(TARGET.OpSysAndVer == "AlmaLinux9")'
CONTACT_HOST = "notebook-alice.casa.test"


@pytest.fixture(scope="module")
def alice_server_token(facility, admin_token) -> str:
    """Like the notebook's JUPYTERHUB_API_TOKEN: it may obtain alice's own facility tokens."""
    session, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user=alice"], "note": "jobqueue test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


async def wait_for(log: Path, tool: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not (found := [r for r in read_records(log) if r["tool"] == tool]):
        assert time.monotonic() < deadline, f"{tool} was not run within {timeout} s"
        await asyncio.sleep(0.1)  # the cluster runs in this event loop
    return found[0]


async def test_worker_job_is_submitted_with_image_tokens_and_contact_address(
        facility, alice_server_token, tmp_path, monkeypatch):
    log = tmp_path / "records.jsonl"
    install_recorder(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("CONDOR_CONFIG", str(tmp_path / "condor_config"))
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", alice_server_token)  # the notebook has it; jobs must not
    source = BrokerTokenSource(api_url=f"{facility.hub_url}/hub/api", api_token=alice_server_token, ssl={})
    # the compute token file the spawner keeps fresh in $CASA_TOKEN_DIR (here: from the same broker)
    compute_file = write_private(tmp_path / "htcondor.token", await source.fetch("htcondor"))
    port = free_port()
    cluster = await FacilityHTCondorCluster(
        cores=1, memory="1GB", disk="1GB", image=IMAGE, requirements=REQUIREMENTS,
        accounting_group="group_physics.{username}", walltime="00:10:00",
        contact_address=f"tls://{CONTACT_HOST}:{port}", scheduler_port=port,
        scheduler_options={"host": "127.0.0.1"}, token_dir=str(tmp_path / "jobs"), token_source=source,
        compute_token_file=str(compute_file), asynchronous=True)
    cluster_dir = Path(cluster._casa_dir)
    try:
        cluster.scale(1)
        submit = await wait_for(log, "condor_submit")
        # the command and its environment: paths only, the compute token by file, SciTokens only
        assert len(submit["argv"]) == 1 and submit["argv"][0].endswith(".sh")
        assert submit["env"] == {"PATH": os.environ["PATH"], "HOME": os.path.expanduser("~"),
                                 "CONDOR_CONFIG": str(tmp_path / "condor_config"),
                                 "_CONDOR_SCITOKENS_FILE": str(compute_file),
                                 "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS"}
        compute_claims = verify_with_published_jwks(submit["files"]["scitokens_file"]["content"],
                                                    facility.issuer_url, "casa-demo-htcondor")
        assert compute_claims["sub"] == "alice"

        desc = htcondor2.Submit(submit["description"])
        assert desc["universe"] == "container" and desc["container_image"] == IMAGE
        assert desc["accounting_group"] == "group_physics.alice" and desc["accounting_group_user"] == "alice"
        assert desc["allowed_job_duration"] == "600" and desc["should_transfer_files"] == "YES"
        inputs = desc["transfer_input_files"].split(", ")
        tls = [str(cluster_dir / n) for n in ("casa-dask-ca.pem", "casa-dask-worker.pem", "casa-dask-worker.key")]
        token_path = next(p for p in inputs if p.endswith(".casa-storage.token"))
        assert inputs == [*tls, token_path] and Path(token_path).parent == cluster_dir
        assert all(submit["files"][p]["mode"] == "0o600" for p in inputs)
        storage = verify_with_published_jwks(submit["files"][token_path]["content"], facility.issuer_url,
                                             "casa-demo-xcache")
        assert storage["sub"] == "alice" and storage["scope"] == "storage.read:/user/alice"
        not_after = storage["exp"] - 600 - 300
        assert desc["requirements"] == f"({REQUIREMENTS}) && (time() <= {not_after})"
        assert desc["periodic_remove"] == f"(JobStatus == 1) && (time() > {not_after})"
        # the worker: token by path in its sandbox, TLS files by name, the scheduler's contact address
        args = desc["arguments"]
        assert f'export BEARER_TOKEN_FILE=""$PWD/{Path(token_path).name}""' in args
        assert f"tls://{CONTACT_HOST}:{port}" in args
        assert "--tls-ca-file casa-dask-ca.pem --tls-cert casa-dask-worker.pem --tls-key casa-dask-worker.key" in args
        handed = [submit["description"], *submit["argv"], *submit["env"].values()]
        assert not any(alice_server_token in text for text in handed), "the hub token reached HTCondor"
        assert "getenv" not in {k.lower() for k in desc}, "getenv stays off: nothing of the notebook's environment"
        cluster.scale(0)
        remove = await wait_for(log, "condor_rm")
        assert remove["argv"] == ["1.0"] and remove["env"] == submit["env"]
        deadline = time.monotonic() + 30
        while Path(token_path).exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not Path(token_path).exists(), "the worker's token file outlived the worker"
    finally:
        await cluster.close()
    assert not cluster_dir.exists(), "the cluster's private directory was left behind"
