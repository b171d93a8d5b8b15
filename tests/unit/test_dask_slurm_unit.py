"""FacilitySlurmBackend's commands and checks, in process (the real Slurm flows are in test_dask_slurm.py)."""

from __future__ import annotations

import pytest
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import Cluster, JobStatus, Worker
from dask_gateway_server.models import User
from dask_gateway_server.utils import FrozenAttrDict
from traitlets.config import Config

from casa_hub.dask.slurm import FacilitySlurmBackend, FacilitySlurmClusterConfig
from casa_hub.dask.worker_tokens import TokenLifetimeError, check_covers, parse_walltime

GRANTS = {"xcache": {"audience": "casa-demo-xcache", "scopes": ["storage.read:/user/{username}"],
                     "lifetime": 1200, "groups": ["physicists"]}}


def backend(**cluster) -> FacilitySlurmBackend:
    c = Config()
    c.FacilitySlurmBackend.api_url = "http://127.0.0.1:8000/api"
    c.FacilitySlurmBackend.slurm_conf = "/etc/casa/slurm.conf"
    c.FacilitySlurmClusterConfig.job_venv = "/opt/casa/venv"
    c.FacilitySlurmClusterConfig.partition = "dask"
    c.FacilitySlurmClusterConfig.account = "physics"
    c.FacilitySlurmClusterConfig.worker_walltime = "00:10:00"
    c.FacilitySlurmClusterConfig.staging_directory = "/home/{username}/.dask-gateway/"
    for key, value in cluster.items():
        setattr(c.FacilitySlurmClusterConfig, key, value)
    c.CasaTokenIssuer.issuer_url = "https://hub.casa.test/hub/casa-issuer"
    c.CasaTokenIssuer.grants = GRANTS
    return FacilitySlurmBackend(config=c)


def cluster_of(b: FacilitySlurmBackend) -> Cluster:
    # the base class looks the user up in the passwd database: a user every Debian has
    config = FrozenAttrDict(b.cluster_config_class(parent=b).to_dict())
    return Cluster(name="c1", username="nobody", token="t" * 32, config=config, status=JobStatus.RUNNING,
                   target=JobStatus.RUNNING, scheduler_address="tls://127.0.0.1:1234")


async def test_scheduler_and_worker_commands():
    b = backend()
    cluster = cluster_of(b)
    cmd, env, script = b.get_submit_cmd_env_stdin(cluster)
    assert cmd[0].endswith("sbatch") and cmd[1:4] == ["--job-name=dask-scheduler-c1", "--parsable", "--partition=dask"]
    assert "--account=physics" in cmd and "--chdir=/home/nobody/.dask-gateway/c1" in cmd
    assert not any(a.startswith("--time=") for a in cmd), "no scheduler walltime configured: the partition's"
    assert env["SLURM_CONF"] == "/etc/casa/slurm.conf"
    export = next(a for a in cmd if a.startswith("--export="))
    assert "SLURM_CONF" not in export and "DASK_GATEWAY_API_TOKEN" in export
    assert "/opt/casa/venv/bin/dask scheduler --protocol tls" in script and "BEARER_TOKEN_FILE" not in script

    cmd, env, script = b.get_submit_cmd_env_stdin(cluster, Worker(name="w1", cluster=cluster, status=JobStatus.CREATED))
    assert cmd[1] == "--job-name=dask-worker-c1" and cmd[-1] == "--time=00:10:00"
    lines = script.splitlines()
    assert lines[:3] == ["#!/bin/sh", "export BEARER_TOKEN_FILE=/home/nobody/.dask-gateway/c1.w1/casa-storage.token",
                         'chmod 600 "$BEARER_TOKEN_FILE"']
    assert lines[-1].startswith("/opt/casa/venv/bin/dask worker tls://127.0.0.1:1234")
    assert b.get_stop_cmd_env("42")[1] == {"SLURM_CONF": "/etc/casa/slurm.conf"}
    assert b.get_status_cmd_env(["42"])[1] == {"SLURM_CONF": "/etc/casa/slurm.conf"}


async def test_cluster_refused_when_tokens_cannot_cover_the_walltime():
    with pytest.raises(PublicException, match=r"'xcache' token lives 1200 s .* walltime of 01:00:00"):
        await backend(worker_walltime="01:00:00").process_cluster_options(User("alice", groups=["physicists"]), {})
    _, config = await backend().process_cluster_options(User("alice", groups=["physicists"]), {})
    assert config.casa_groups == ["physicists"]
    with pytest.raises(PublicException, match="your groups do not allow 'xcache' tokens"):
        await backend().process_cluster_options(User("eve", groups=["visitors"]), {})
    # without a storage grant there is nothing to cover
    await backend(worker_walltime="01:00:00", storage_grant="").process_cluster_options(User("bob"), {})


async def test_with_token_renewal_the_walltime_may_exceed_the_token_lifetime():
    # the owner's client renews the workers' tokens over Dask: a 4 h walltime with 20-minute tokens
    b = backend(worker_walltime="04:00:00", token_renewal=True)
    _, config = await b.process_cluster_options(User("alice", groups=["physicists"]), {})
    assert config.token_renewal is True and config.worker_walltime == "04:00:00"
    # still only for users who may receive the grant
    with pytest.raises(PublicException, match="your groups do not allow 'xcache' tokens"):
        await b.process_cluster_options(User("eve", groups=["visitors"]), {})


def test_walltimes_and_lifetimes():
    assert [parse_walltime(v) for v in ("600", 600, "10:00", "00:10:00", "1-00:00:00")] == [600, 600, 600, 600, 86400]
    for bad in ("", "ten minutes", "0", "-5", True):
        with pytest.raises(ValueError):
            parse_walltime(bad)
    check_covers(expires_at=2000, walltime=600, grant="g", margin=300, now=1000)
    with pytest.raises(TokenLifetimeError, match="lives 899 s"):
        check_covers(expires_at=1899, walltime=600, grant="g", margin=300, now=1000)
    with pytest.raises(ValueError):
        FacilitySlurmClusterConfig(worker_walltime="soon")
