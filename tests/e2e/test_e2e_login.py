"""Login through the real OIDC provider into a real hub: success and refusals (over HTTP)."""

from __future__ import annotations

import re

import pytest
import requests
from helpers import (
    admin_api,
    http_login,
    login_and_start_server,
    read_server_environ,
    verify_with_published_jwks,
)

pytestmark = pytest.mark.e2e


def test_login_spawns_server_with_verifiable_storage_token(facility, admin_token):
    model = login_and_start_server(facility.hub_url, admin_token, "alice", facility.password("alice"))
    pid = model["servers"][""]["state"]["pid"]
    env = read_server_environ(pid)
    token_file = env["BEARER_TOKEN_FILE"]
    assert token_file.startswith(env["CASA_TOKEN_DIR"])
    token = open(token_file).read()
    assert token not in "\n".join(f"{k}={v}" for k, v in env.items()), "token value leaked into env"
    claims = verify_with_published_jwks(token, facility.issuer_url, "casa-demo-xcache")
    assert claims["sub"] == "alice"
    assert claims["scope"] == "storage.read:/user/alice"
    assert claims["wlcg.ver"] == "1.0"
    assert 0 < claims["exp"] - claims["iat"] <= 20 * 60
    assert claims["nbf"] == claims["iat"]
    assert claims["wlcg.groups"] == ["/physicists"]
    for log in ("hub", "idp"):
        text = (facility.log_dir / f"{log}.log").read_text()
        assert token not in text and token.split(".")[2] not in text, f"token value in {log}.log"
    assert f"mint user=alice grant=xcache jti={claims['jti']}" in (facility.log_dir / "hub.log").read_text()


def test_wrong_password_shows_message_and_creates_nothing(facility, admin_token):
    s, r = http_login(facility.hub_url, "alice", "not-the-password")
    assert r.status_code == 200
    assert "Invalid username or password" in r.text
    assert r.url.startswith(facility.idp_url), "a failed password must not reach the hub"
    # no hub session cookie was issued
    assert requests.get(f"{facility.hub_url}/hub/api/user", cookies=s.cookies, timeout=10).status_code == 403


def login_count(facility, admin_token: str, outcome: str) -> float:
    metrics = admin_api(facility.hub_url, admin_token, "/metrics")
    assert metrics.status_code == 200, metrics.text[:300]
    found = re.search(rf'^casa_hub_logins_total{{outcome="{outcome}"}} (\S+)$', metrics.text, re.M)
    return float(found.group(1)) if found else 0.0


def test_user_outside_allowed_groups_is_refused_with_clear_message(facility, admin_token):
    refused_before = login_count(facility, admin_token, "not_allowed")
    s, r = http_login(facility.hub_url, "eve", facility.password("eve"))
    assert r.status_code == 403
    assert "not a member of a group allowed to use this facility" in r.text
    assert r.url.startswith(facility.hub_url)
    # the hub has no such user: no server, no auth_state
    assert admin_api(facility.hub_url, admin_token, "/users/eve").status_code == 404
    assert login_count(facility, admin_token, "not_allowed") == refused_before + 1, "counted by reason"
    assert login_count(facility, admin_token, "success") >= 1


def test_issuer_publishes_discovery_and_jwks_with_cache_headers(facility):
    r = requests.get(f"{facility.issuer_url}/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200
    assert "max-age" in r.headers["Cache-Control"]
    doc = r.json()
    assert doc["issuer"] == facility.issuer_url
    jwks = requests.get(doc["jwks_uri"], timeout=10).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"]), "private key material published"


def metric_count(facility, admin_token: str, name: str, **labels: str) -> float:
    text = admin_api(facility.hub_url, admin_token, "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}_count{{{re.escape(want)}}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_admin_metrics_after_a_login_and_spawn(facility, admin_token):
    """Mints by grant, token lifetimes and spawn preparation time are on /hub/metrics."""
    login_and_start_server(facility.hub_url, admin_token, "alice", facility.password("alice"))
    assert metric_count(facility, admin_token, "casa_hub_spawn_prepare_duration_seconds", outcome="ok") >= 1
    assert metric_count(facility, admin_token, "casa_hub_token_lifetime_seconds", grant="xcache") >= 1
    text = admin_api(facility.hub_url, admin_token, "/metrics").text
    assert re.search(r'^casa_hub_tokens_minted_total\{grant="xcache"\} [1-9]', text, re.M)
    assert 'casa_hub_token_lifetime_seconds_bucket{grant="xcache",le="1200.0"}' in text
