"""`casa-hub check CONFIG`: good and bad configurations, run as an admin would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from casa_hub.demo.facility import HUB_CONFIG, free_port

pytestmark = pytest.mark.e2e

SECRET = "client-secret-that-must-not-be-printed"


def run_check(config: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "casa_hub.cli", "check", str(config), *extra],
                          env=env, capture_output=True, text=True, timeout=120)


def write_config(tmp_path: Path, facility, **overrides: str) -> Path:
    lines = {
        "authenticator": 'c.JupyterHub.authenticator_class = "casa-oidc"',
        "issuer": f'c.CasaOIDCAuthenticator.oidc_issuer = "{facility.idp_url}"',
        "client_id": 'c.CasaOIDCAuthenticator.client_id = "casa-hub"',
        "secret": f'c.CasaOIDCAuthenticator.client_secret = "{SECRET}"',
        "callback": 'c.CasaOIDCAuthenticator.oauth_callback_url = "https://hub.example.org/hub/oauth_callback"',
        "issuer_url": f'c.CasaTokenIssuer.issuer_url = "{facility.issuer_url}"',
        "key_dir": f'c.CasaTokenIssuer.key_dir = "{tmp_path / "keys"}"',
        "generate": 'c.CasaTokenIssuer.generate_key_if_missing = "ES256"',
        "grants": 'c.CasaTokenIssuer.grants = {"xcache": {"audience": "https://xcache.example.org", '
                  '"scopes": ["storage.read:/user/{username}"], "groups": ["physicists"]}}',
        "spawner": 'c.JupyterHub.spawner_class = "casa-local"',
    }
    lines.update(overrides)
    path = tmp_path / "jupyterhub_config.py"
    path.write_text("c = get_config()  # noqa\n" + "\n".join(lines.values()) + "\n")
    return path


@pytest.fixture
def env() -> dict[str, str]:
    return {**os.environ, "JUPYTERHUB_CRYPT_KEY": "ab" * 32}


def test_demo_configuration_passes_with_live_services(facility, env):
    env = dict(env, **facility.config_env(),
               JUPYTERHUB_CRYPT_KEY=(facility.state_dir / "secrets" / "crypt_key").read_text())
    r = run_check(HUB_CONFIG, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"provider {facility.idp_url} answers discovery (end_session, revocation endpoints)" in r.stdout
    assert "answered 200" in r.stdout and "CasaTokenIssuer.grants['xcache']" in r.stdout
    assert "OK: 0 error(s)" in r.stdout
    client_secret = (facility.state_dir / "secrets" / "oidc_client_secret").read_text()
    assert client_secret not in r.stdout + r.stderr


@pytest.mark.parametrize("override, expected", [
    ({"grants": 'c.CasaTokenIssuer.grants = {"xcache": {"audience": "a", "scopes": ["storage.read:/"], '
                '"lifetime": 99999}}'}, "CasaTokenIssuer.grants['xcache'].lifetime"),
    ({"grants": 'c.CasaTokenIssuer.grants = {"x": {"audience": "a", "scopes": ["storage.read:/user/{username}/.."]}}'},
     "CasaTokenIssuer.grants['x']"),
    ({"issuer": 'c.CasaOIDCAuthenticator.oidc_issuer = "http://127.0.0.1:{port}"'}, "discovery failed"),
    ({"client_id": ""}, "CasaOIDCAuthenticator.client_id: is not set"),
    ({"generate": "", "key_dir": 'c.CasaTokenIssuer.key_dir = "/nonexistent/keys"'}, "does not exist"),
    ({"broken": "c.JupyterHub.ip = = 1"}, "failed to load: SyntaxError"),
    ({"integrations": "from casa_hub.integrations import ServiceXIntegration, XCacheIntegration\n"
                      "c.CasaSpawnerMixin.integration_classes = [XCacheIntegration, ServiceXIntegration]"},
     "error integration servicex: ServiceXIntegration.endpoint is not set"),
], ids=["grant too long", "traversal in scope", "provider down", "no client id", "no keys", "syntax error",
        "service without endpoint"])
def test_bad_configuration_is_reported_with_the_setting_named(facility, env, tmp_path, override, expected):
    override = {k: v.replace("{port}", str(free_port())) for k, v in override.items()}
    r = run_check(write_config(tmp_path, facility, **override), env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert expected in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr and SECRET not in r.stdout + r.stderr


def test_missing_crypt_key_is_an_error(facility, env, tmp_path):
    env.pop("JUPYTERHUB_CRYPT_KEY")
    r = run_check(write_config(tmp_path, facility), env, "--offline")
    assert r.returncode == 1
    assert "error JUPYTERHUB_CRYPT_KEY: auth_state is enabled but the env var is not set" in r.stdout


def test_good_standalone_configuration_passes_offline(facility, env, tmp_path):
    r = run_check(write_config(tmp_path, facility), env, "--offline")
    assert r.returncode == 0, r.stdout
    assert "ok    JupyterHub.spawner_class: CasaLocalProcessSpawner" in r.stdout
    assert "discovery" not in r.stdout, "--offline must not contact the provider"
