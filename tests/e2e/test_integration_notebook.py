"""XCache, ServiceX, HTCondor and Triton configured in a real notebook started by the real hub.

A facility (provider, hub, proxy, issuer, local spawner; no Dask) with ``servicex`` and
``triton`` grants added and the four integrations enabled by an extra hub config file, plus a
site subclass of the ServiceX integration whose endpoint has a typo: that one must be skipped
with a reason in the hub log while the notebook starts with everything else. alice signs in over
HTTP, her server starts, and the tests read the server process's environment and files, then run
the real clients (ServiceX, htcondor2 bindings, the Triton helper) in subprocesses with exactly
that environment and cwd = her home, as a notebook kernel would.

The facility is ``shared_integrations_facility`` (tests/support/shared_facilities.py, whose
``INTEGRATIONS_CONFIG`` is the extra hub config), shared with test_integration_mlflow_e2e.py (which
adds the MLflow integration and its grant) and test_login_rejections.py; alice's server is started
here and stopped when this module ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from facilities import stop_servers
from helpers import login_and_start_server, read_server_environ, verify_with_published_jwks
from integration_support import (
    BINDINGS_SCRIPT,
    DELIVER_SCRIPT,
    RecordingServiceX,
    Secret,
    parse_result,
)

pytestmark = pytest.mark.e2e

AUDIENCES = {"xcache": "casa-demo-xcache", "htcondor": "casa-demo-htcondor",
             "servicex": "casa-test-servicex", "triton": "casa-test-triton"}


@pytest.fixture(scope="module")
def servicex_endpoint(shared_servicex) -> RecordingServiceX:
    return shared_servicex


@pytest.fixture(scope="module")
def fac(shared_integrations_facility, servicex_endpoint):
    """Configured for ``servicex_endpoint`` (and the integrations above)."""
    return shared_integrations_facility


@pytest.fixture(scope="module")
def notebook(fac, admin_token) -> dict:
    """alice's running server, started here: its environment, home, and her token values by grant."""
    stop_servers(fac, admin_token, "alice")  # a fresh server with fresh tokens
    model = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    token_dir = Path(env["CASA_TOKEN_DIR"])
    tokens = {p.name.removesuffix(".token"): Secret(p.read_text().strip()) for p in token_dir.glob("*.token")}
    yield {"env": env, "home": Path(env["HOME"]), "tokens": tokens, "token_dir": token_dir,
           "config_dir": Path(env["CASA_CONFIG_DIR"])}
    stop_servers(fac, admin_token, "alice")


def run_in_notebook(notebook: dict, args: list[str]) -> subprocess.CompletedProcess:
    """A process with exactly the notebook server's environment, in alice's home."""
    return subprocess.run([sys.executable, *args], env=notebook["env"], cwd=notebook["home"],
                          capture_output=True, text=True, timeout=120)


def test_notebook_env_names_paths_and_endpoints_only(notebook, servicex_endpoint):
    env, tdir, cdir = notebook["env"], notebook["token_dir"], notebook["config_dir"]
    expected = {
        "BEARER_TOKEN_FILE": f"{tdir}/xcache.token",
        "CASA_XCACHE_URL": "roots://xcache.casa.invalid:1094",
        "X509_CERT_DIR": "/etc/ssl/certs",
        "XRD_REQUESTTIMEOUT": "120",
        "CASA_SERVICEX_URL": servicex_endpoint.url,
        "CASA_SERVICEX_CONFIG": f"{cdir}/servicex.yaml",
        "CASA_SERVICEX_TOKEN_FILE": f"{tdir}/servicex.token",
        "CONDOR_CONFIG": f"{cdir}/condor_config",
        "TRITON_SERVER_URL": "grpc://127.0.0.1:8001",
        "CASA_TRITON_CONFIG": f"{cdir}/triton.json",
        "CASA_TRITON_TOKEN_FILE": f"{tdir}/triton.token",
        "CASA_TRITON_MODEL_REPOSITORY": "s3://models/alice",
        "CASA_TRITON_MODEL_REPOSITORY_CREDENTIALS": "/etc/casa/s3/alice.ini",
    }
    assert {k: env.get(k) for k in expected} == expected
    for name, value in env.items():
        for grant, token in notebook["tokens"].items():
            assert token not in value, f"the {grant} token's value is in the notebook's env var {name}"


def test_token_files_are_private_and_each_service_gets_its_own_audience(fac, notebook):
    assert stat.S_IMODE(notebook["token_dir"].stat().st_mode) == 0o700
    assert set(AUDIENCES) <= set(notebook["tokens"]), sorted(notebook["tokens"])
    for grant, audience in AUDIENCES.items():
        path = notebook["token_dir"] / f"{grant}.token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        claims = verify_with_published_jwks(notebook["tokens"][grant], fac.issuer_url, audience)
        assert claims["sub"] == "alice"


def test_config_files_in_the_notebook(notebook, servicex_endpoint):
    cdir, tdir = notebook["config_dir"], notebook["token_dir"]
    assert stat.S_IMODE(cdir.stat().st_mode) == 0o700
    names = {p.name for p in cdir.iterdir()}
    assert {"servicex.yaml", "condor_config", "triton.json"} <= names, names
    for name in ("servicex.yaml", "condor_config", "triton.json"):
        assert stat.S_IMODE((cdir / name).stat().st_mode) == 0o600, name
        text = (cdir / name).read_text()
        assert not any(token in text for token in notebook["tokens"].values()), f"a token value is in {name}"
    sx = yaml.safe_load((cdir / "servicex.yaml").read_text())
    assert sx["api_endpoints"] == [{"name": "facility", "endpoint": servicex_endpoint.url}]
    assert sx["default-endpoint"] == "facility"
    assert f"SCITOKENS_FILE = {tdir}/htcondor.token\n" in (cdir / "condor_config").read_text()
    triton = json.loads((cdir / "triton.json").read_text())
    assert triton["endpoints"]["gpu"]["address"] == "127.0.0.1:8001"
    assert triton["token_file"] == f"{tdir}/triton.token"


def test_misconfigured_site_integration_is_skipped_with_the_reason_in_the_hub_log(fac, notebook):
    log = (fac.log_dir / "hub.log").read_text(errors="replace")
    assert "SecondServiceX is enabled but not configured correctly" in log
    assert "SecondServiceX.endpoint 'servicex.casa.invalid' must be a URL like https://host:port" in log
    # ... and alice's server started with everything else (the other tests), no token in the log
    assert not any(token in log for token in notebook["tokens"].values())


def test_servicex_client_in_the_notebook_sends_the_servicex_token(fac, notebook, servicex_endpoint):
    servicex_endpoint.requests.clear()
    run = run_in_notebook(notebook, ["-c", DELIVER_SCRIPT])
    assert run.returncode == 0, run.stderr[-3000:]
    result = parse_result(run.stdout)
    assert result["config_file"] == notebook["env"]["CASA_SERVICEX_CONFIG"]
    assert result["endpoint"] == servicex_endpoint.url
    paths = [(r.method, r.path) for r in servicex_endpoint.requests]
    assert ("GET", "/servicex") in paths and ("POST", "/servicex/transformation") in paths, paths
    sent = servicex_endpoint.bearer_tokens()
    assert notebook["tokens"]["xcache"] not in sent, "the storage token (BEARER_TOKEN_FILE) went to ServiceX"
    current = Secret((notebook["token_dir"] / "servicex.token").read_text().strip())
    assert sent == [current] * len(sent), f"every request must carry alice's ServiceX token: {paths}"
    claims = verify_with_published_jwks(sent[0], fac.issuer_url, "casa-test-servicex")
    assert claims["sub"] == "alice" and claims["scope"] == "servicex.submit"


def test_htcondor_bindings_in_the_notebook_use_alices_compute_token(notebook):
    names = ["SCITOKENS_FILE", "SEC_CLIENT_AUTHENTICATION_METHODS", "SEC_CLIENT_AUTHENTICATION",
             "COLLECTOR_HOST", "SCHEDD_HOST"]
    run = run_in_notebook(notebook, ["-c", BINDINGS_SCRIPT, json.dumps(names)])
    assert run.returncode == 0, run.stderr[-3000:]
    out = parse_result(run.stdout)
    assert out["param"] == {
        "SCITOKENS_FILE": str(notebook["token_dir"] / "htcondor.token"),
        "SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "SEC_CLIENT_AUTHENTICATION": "REQUIRED",
        "COLLECTOR_HOST": "cm.casa.invalid:9618",
        "SCHEDD_HOST": "submit.casa.invalid",
    }
    assert os.path.exists(out["param"]["SCITOKENS_FILE"])
    tokens = notebook["tokens"].values()
    assert not any(t in v for t in tokens for v in out["all_values"]), "a token value is in HTCondor's config"
    assert not any(t in out["submit"] for t in tokens), "a token value is in the job description"


def test_triton_helper_in_the_notebook(notebook):
    script = ("import hashlib, json; from casa_hub.integrations.triton import endpoint_settings\n"
              "s = endpoint_settings(); h = s.pop('headers')().get('Authorization', '')\n"
              "print('RESULT ' + json.dumps({'settings': s, 'scheme': h[:7],\n"
              "                             'sha256': hashlib.sha256(h[7:].encode()).hexdigest()}))")
    run = run_in_notebook(notebook, ["-c", script])
    assert run.returncode == 0, run.stderr[-3000:]
    out = parse_result(run.stdout)
    assert out["settings"] == {"url": "grpc://127.0.0.1:8001", "protocol": "grpc",
                               "address": "127.0.0.1:8001", "ssl": False}
    assert out["scheme"] == "Bearer "
    assert out["sha256"] == hashlib.sha256(notebook["tokens"]["triton"].encode()).hexdigest(), (
        "the helper's header must carry alice's triton token")
