"""ServiceXIntegration and casa_hub's ServiceX client plugin, with the real ServiceX client.

The notebook's ``BEARER_TOKEN_FILE`` is the storage token (for XRootD), and the stock ServiceX
client sends that file as its access token. casa_hub's plugin, which the client loads itself on
``import servicex`` (entry point group ``servicex.query``), makes it send the ServiceX grant's token
to the facility endpoint and no ``BEARER_TOKEN_FILE`` token anywhere else. The client runs in a
subprocess as a notebook would, against a recording endpoint on 127.0.0.1 (tests/integration_support.py).
End-to-end through the real hub: tests/test_integration_notebook.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import jwt
import pytest
import yaml
from integration_support import (
    DELIVER_SCRIPT,
    RecordingServiceX,
    Secret,
    parse_result,
    spawn_context,
)
from servicex.configuration import Configuration
from traitlets.config import Config

from casa_hub.integrations import Contribution, ServiceXIntegration
from casa_hub.integrations.servicex import client_auth as servicex_auth
from casa_hub.tokens.issuer import CasaTokenIssuer

GRANTS = {
    "xcache": {"audience": "casa-test-xcache", "scopes": ["storage.read:/user/{username}"]},
    "servicex": {"audience": "casa-test-servicex", "scopes": ["servicex.submit"]},
}


def make(log: logging.Logger | None = None, **settings) -> ServiceXIntegration:
    cfg = Config()
    for key, value in settings.items():
        setattr(cfg.ServiceXIntegration, key, value)
    return ServiceXIntegration(config=cfg, log=log or logging.getLogger("casa-test"))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> dict[str, Secret]:
    """Real facility tokens (ES256 JWTs) for alice: her storage token and her ServiceX token."""
    cfg = Config()
    cfg.CasaTokenIssuer.issuer_url = "https://hub.example.org/hub/casa-issuer"
    cfg.CasaTokenIssuer.key_dir = str(tmp_path_factory.mktemp("issuer-keys"))
    cfg.CasaTokenIssuer.generate_key_if_missing = "ES256"
    cfg.CasaTokenIssuer.grants = GRANTS
    issuer = CasaTokenIssuer(config=cfg)
    return {g: Secret(issuer.mint("alice", g, ["physicists"]).token) for g in GRANTS}


# ---- what the integration contributes ------------------------------------------------------


def test_contribution_is_a_servicex_yaml_and_paths():
    part = make(endpoint="https://servicex.example.org/").contribute(
        spawn_context({"servicex": "sx-token-value", "xcache": "storage-token-value"}))
    assert part.env == {
        "CASA_SERVICEX_URL": "https://servicex.example.org",
        "CASA_SERVICEX_CONFIG": "/home/alice/.casa/config/servicex.yaml",
        "CASA_SERVICEX_TOKEN_FILE": "/home/alice/.casa/tokens/servicex.token",
    }
    assert set(part.files) == {"servicex.yaml"}
    text = part.files["servicex.yaml"].decode()
    assert "token-value" not in text, "the yaml must hold no token: the token lives in its own file"
    assert yaml.safe_load(text) == {
        "api_endpoints": [{"name": "facility", "endpoint": "https://servicex.example.org"}],
        "default-endpoint": "facility",
        "cache_path": "~/.cache/servicex",
    }


def test_the_real_client_reads_the_generated_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    xs = make(endpoint="https://servicex.example.org", endpoint_name="uchicago",
              cache_path="~/sx-cache/{username}")
    (tmp_path / "servicex.yaml").write_bytes(xs.contribute(spawn_context({"servicex": "t"})).files["servicex.yaml"])
    config = Configuration.read(str(tmp_path / "servicex.yaml"))
    assert config.default_endpoint == "uchicago"
    assert config.endpoint_dict()["uchicago"].endpoint == "https://servicex.example.org"
    assert config.endpoint_dict()["uchicago"].token == "", "no refresh token is written"
    assert config.cache_path == str(tmp_path / "sx-cache" / "alice"), "~ is the notebook user's home"


def test_users_without_the_servicex_grant_get_no_servicex_configuration(caplog):
    xs = make(endpoint="https://servicex.example.org")
    with caplog.at_level(logging.INFO, logger="casa-test"):
        assert xs.contribute(spawn_context({"xcache": "storage"})) == Contribution()
    assert "no token for grant 'servicex'" in caplog.text


def test_an_endpoint_without_token_needs_no_grant():
    xs = make(endpoint="http://servicex.internal:5000", grant="")
    assert xs.grants() == []
    part = xs.contribute(spawn_context({}))
    assert "CASA_SERVICEX_TOKEN_FILE" not in part.env
    assert set(part.files) == {"servicex.yaml"}


def test_disabled_contributes_nothing():
    xs = make(enabled=False, endpoint="https://servicex.example.org")
    assert xs.grants() == []
    assert xs.contribute(spawn_context({"servicex": "t"})) == Contribution()


@pytest.mark.parametrize("settings, named", [
    ({}, "ServiceXIntegration.endpoint is not set"),
    ({"endpoint": "servicex.example.org"}, "ServiceXIntegration.endpoint"),
    ({"endpoint": "https://servicex.example.org", "endpoint_name": ""}, "endpoint_name"),
    ({"endpoint": "https://servicex.example.org", "cache_path": "/tmp/{user}"}, "cache_path"),
])
def test_misconfiguration_is_skipped_with_a_logged_reason(caplog, settings, named):
    xs = make(**settings)
    with caplog.at_level(logging.WARNING, logger="casa-test"):
        assert xs.grants() == []
        assert xs.contribute(spawn_context({"servicex": "t"})) == Contribution()
    assert len(caplog.records) == 1
    assert "ServiceXIntegration is enabled but not configured correctly" in caplog.text
    assert named in caplog.text


# ---- the client plugin -----------------------------------------------------------------------


def test_the_client_loads_the_plugin_through_its_entry_points():
    eps = {ep.name: ep.value for ep in entry_points(group="servicex.query")}
    assert eps.get("CasaFacilityAuth") == "casa_hub.integrations.servicex.client_auth:CasaFacilityAuth"


def test_the_token_file_is_read_on_every_lookup(tmp_path, monkeypatch):
    token_file = tmp_path / "servicex.token"
    token_file.write_text("first\n")
    monkeypatch.setenv("CASA_SERVICEX_URL", "https://servicex.example.org")
    monkeypatch.setenv("CASA_SERVICEX_TOKEN_FILE", str(token_file))
    assert servicex_auth.facility_token("https://servicex.example.org/") == "first"
    token_file.write_text("renewed\n")  # the renewal agent replaced it
    assert servicex_auth.facility_token("https://SERVICEX.example.org") == "renewed"
    assert servicex_auth.facility_token("https://other.example.org") is None
    assert servicex_auth.facility_token("http://servicex.example.org") is None


def notebook_env(tmp_path: Path, tokens: dict[str, Secret], url: str) -> tuple[dict[str, str], Path]:
    """The environment a spawn with XCache and ServiceX produces, files written as the spawner does."""
    home = tmp_path / "home"
    ctx = spawn_context(tokens, root=str(home / ".casa"))
    for d in (ctx.token_dir, ctx.config_dir):
        os.makedirs(d, mode=0o700)
    for grant, value in tokens.items():
        Path(ctx.token_path(grant)).write_text(value)
    part = make(endpoint=url).contribute(ctx)
    for name, content in part.files.items():
        (Path(ctx.config_dir) / name).write_bytes(content)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "BEARER_TOKEN_FILE": ctx.token_path("xcache"),
           **part.env}
    (home / "analysis").mkdir()
    return env, home / "analysis"


def run_client(env: dict[str, str], cwd: Path, script: str = DELIVER_SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.e2e
def test_real_client_sends_the_servicex_token_not_the_storage_token(tmp_path, tokens):
    with RecordingServiceX() as sx:
        env, cwd = notebook_env(tmp_path, tokens, sx.url)
        run = run_client(env, cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    result = parse_result(run.stdout)
    # found by the plugin's fallback: nothing in ~/analysis, its parents or $HOME
    assert result["config_file"] == env["CASA_SERVICEX_CONFIG"]
    assert result["endpoint"] == sx.url
    assert result["cache_path"] == str(Path(env["HOME"]) / ".cache" / "servicex")
    paths = [(r.method, r.path) for r in sx.requests]
    assert ("GET", "/servicex") in paths and ("POST", "/servicex/transformation") in paths, paths
    sent = sx.bearer_tokens()
    assert tokens["xcache"] not in sent, "the storage token was sent to ServiceX"
    assert sent == [tokens["servicex"]] * len(sent), f"every request must carry the ServiceX token: {paths}"
    claims = jwt.decode(sent[0], options={"verify_signature": False})
    assert claims["aud"] == "casa-test-servicex" and claims["sub"] == "alice"


@pytest.mark.e2e
def test_a_users_own_servicex_yaml_keeps_precedence(tmp_path, tokens):
    with RecordingServiceX() as facility, RecordingServiceX() as elsewhere:
        env, cwd = notebook_env(tmp_path, tokens, facility.url)
        own = cwd / "servicex.yaml"  # e.g. a ServiceX at another site, with its own refresh token
        own.write_text(f"api_endpoints:\n  - name: other\n    endpoint: {elsewhere.url}\n")
        run = run_client(env, cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    assert parse_result(run.stdout)["config_file"] == str(own)
    assert facility.requests == []
    assert elsewhere.requests, "the user's own endpoint was not called"
    assert elsewhere.bearer_tokens() == [None] * len(elsewhere.requests), (
        "no facility token (storage or ServiceX) may go to another ServiceX")


@pytest.mark.e2e
def test_control_the_stock_client_sends_the_storage_token(tmp_path, tokens):
    # Without the plugin's token selection the real client takes BEARER_TOKEN_FILE: the clash the
    # plugin solves, and proof that the recording above would see a wrong token.
    script = "from casa_hub.integrations.servicex import client_auth\nclient_auth.uninstall()\n" + DELIVER_SCRIPT
    with RecordingServiceX() as sx:
        env, cwd = notebook_env(tmp_path, tokens, sx.url)
        (cwd / "servicex.yaml").write_bytes(Path(env["CASA_SERVICEX_CONFIG"]).read_bytes())
        run = run_client(env, cwd, script)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sx.bearer_tokens() and set(sx.bearer_tokens()) == {tokens["xcache"]}


@pytest.mark.e2e
def test_without_the_plugin_the_client_fails_closed(tmp_path, tokens):
    # casa_hub missing where the client runs: no configuration is found, nothing is sent
    script = "from casa_hub.integrations.servicex import client_auth\nclient_auth.uninstall()\n" + DELIVER_SCRIPT
    with RecordingServiceX() as sx:
        env, cwd = notebook_env(tmp_path, tokens, sx.url)
        run = run_client(env, cwd, script)
    assert run.returncode != 0
    assert "Can't find .servicex or servicex.yaml" in run.stderr
    assert sx.requests == []
