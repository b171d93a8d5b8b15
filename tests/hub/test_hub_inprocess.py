"""The authenticator and issuer inside an in-process hub (pytest-jupyterhub's ``hub_app``),
pointed at the session's real OIDC provider."""

from __future__ import annotations

import os

import pytest
from tornado.httpclient import AsyncHTTPClient

from casa_hub.tokens.grants import GrantConfigError
from casa_hub.tokens.issuer import CasaTokenIssuer

pytestmark = pytest.mark.e2e


@pytest.fixture
def hub_config(facility, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{facility.node_modules / '.bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "0" * 64)
    CasaTokenIssuer.clear_instance()
    yield {
        "JupyterHub": {"authenticator_class": "casa-oidc",
                       "cookie_secret_file": str(tmp_path / "cookie_secret")},
        "CasaOIDCAuthenticator": {
            "oidc_issuer": facility.idp_url,
            "client_id": "casa-hub",
            "client_secret": "not-used-here",
            "oauth_callback_url": "http://127.0.0.1/hub/oauth_callback",
            "allowed_groups": {"physicists"},
        },
        "CasaTokenIssuer": {
            "issuer_url": "https://hub.test/hub/casa-issuer",
            "key_dir": str(tmp_path / "keys"),
            "generate_key_if_missing": "ES256",
            "grants": {"xcache": {"audience": "https://xcache.test",
                                  "scopes": ["storage.read:/user/{username}"]}},
        },
    }
    CasaTokenIssuer.clear_instance()


async def test_hub_serves_issuer_and_discovers_the_provider(hub_app, hub_config, facility):
    app = await hub_app(hub_config)
    auth = app.authenticator
    assert type(auth).__name__ == "CasaOIDCAuthenticator"
    meta = await auth.ensure_provider()
    assert auth.token_url == meta.token_endpoint and meta.token_endpoint.startswith(facility.idp_url)
    assert meta.end_session_endpoint and meta.revocation_endpoint
    client = AsyncHTTPClient()
    hub = app.proxy.public_url.rstrip("/") + "/hub/"  # MockHub serves under an unusual base_url
    r = await client.fetch(hub + "casa-issuer/.well-known/openid-configuration")
    assert b'"issuer": "https://hub.test/hub/casa-issuer"' in r.body
    r = await client.fetch(hub + "api/casa/tokens/xcache",
                           method="POST", body=b"", raise_error=False)
    assert r.code == 403, "the broker refuses callers without a hub credential"


async def test_a_bad_grant_stops_the_hub_with_the_setting_named(hub_app, hub_config):
    hub_config["CasaTokenIssuer"]["grants"] = {"xcache": {"audience": "a", "scopes": ["storage.read:/"],
                                                          "lifetime": 7 * 3600}}
    with pytest.raises(GrantConfigError, match=r"CasaTokenIssuer.grants\['xcache'\].lifetime"):
        await hub_app(hub_config)
