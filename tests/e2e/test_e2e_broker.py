"""The token broker in the real hub: who may obtain which token, rate limits, audit, no leaks."""

from __future__ import annotations

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


def broker(facility, token: str | None, grant: str | None = "xcache", method: str = "POST"):
    url = f"{facility.hub_url}/hub/api/casa/tokens" + (f"/{grant}" if grant else "")
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(method, url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def alice_server_token(facility, admin_token) -> str:
    """The JUPYTERHUB_API_TOKEN of alice's running server, as the renewal agent would use it."""
    model = login_and_start_server(facility.hub_url, admin_token, "alice", facility.password("alice"))
    return read_server_environ(model["servers"][""]["state"]["pid"])["JUPYTERHUB_API_TOKEN"]


def test_server_obtains_fresh_token_for_its_own_grant(facility, alice_server_token):
    r = broker(facility, alice_server_token)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    claims = verify_with_published_jwks(body["token"], facility.issuer_url, "casa-demo-xcache")
    assert claims["sub"] == "alice" and claims["scope"] == "storage.read:/user/alice"
    assert body["jti"] == claims["jti"] and body["expires_at"] == claims["exp"]
    second = broker(facility, alice_server_token).json()
    assert second["jti"] != body["jti"], "each call mints a new token"
    log = (facility.log_dir / "hub.log").read_text()
    assert f"mint user=alice grant=xcache jti={claims['jti']}" in log
    assert body["token"] not in log and second["token"] not in log


def test_listing_shows_allowed_grants_without_values(facility, alice_server_token):
    r = broker(facility, alice_server_token, grant=None, method="GET")
    assert r.status_code == 200
    grants = {g["grant"]: g for g in r.json()["grants"]}
    assert set(grants) == {"xcache", "htcondor"}
    assert grants["xcache"]["scope"] == "storage.read:/user/alice"
    assert "token" not in r.text.lower().replace("casa-tokens", "")


@pytest.mark.parametrize("credential, grant, status, message", [
    (None, "xcache", 403, ""),
    ("not-a-real-token", "xcache", 403, ""),
    ("server", "operations", 403, "may not receive 'operations'"),
    ("server", "no-such-grant", 404, "No grant named"),
    ("server", "..%2F..%2Fjwks.json", 404, ""),
    ("admin-service", "xcache", 403, "users only"),
])
def test_refusals(facility, alice_server_token, admin_token, credential, grant, status, message):
    token = {"server": alice_server_token, "admin-service": admin_token}.get(credential, credential)
    r = broker(facility, token, grant)
    assert r.status_code == status, r.text
    assert message in r.text
    assert "eyJ" not in r.text, "no token in an error"


def test_credential_without_renew_scope_is_refused(facility, admin_token, alice_server_token):
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["read:users:name!user=alice"], "note": "read-only"})
    assert r.status_code == 201, r.text
    r = broker(facility, r.json()["token"])
    assert r.status_code == 403 and "custom:casa-tokens:renew" in r.text


def test_rate_limit_per_user(facility, admin_token):
    s, r = http_login(facility.hub_url, "bob", facility.password("bob"))
    assert r.status_code == 200
    r = admin_api(facility.hub_url, admin_token, "/users/bob/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user=bob"], "note": "rate-limit test"})
    assert r.status_code == 201, r.text
    bob = r.json()["token"]
    codes = [broker(facility, bob).status_code for _ in range(16)]
    assert codes.count(200) >= 10 and codes.count(429) >= 3, codes
    limited = broker(facility, bob)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_renew_without_token_in_the_answer(facility, alice_server_token):
    """The "Renew tokens now" button asks for no token value: the hub records and delivers it."""
    r = requests.post(f"{facility.hub_url}/hub/api/casa/tokens/xcache?include_token=0",
                      headers={"Authorization": f"token {alice_server_token}"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "token" not in body and body["jti"] and body["expires_at"]
    assert "eyJ" not in r.text, "no JWT anywhere in the answer"
