"""A provider as real ones behave: groups through userinfo only (not in the ID token), 5 s access
tokens, rotating refresh tokens, outages and lost answers.

- the hub reads groups from userinfo at login AND at every refresh, so a user removed from the
  allowed group at the provider loses the facility at the next refresh, not at the next login;
- provider stopped for 30 s (six access-token lifetimes): sessions and the broker keep working
  (outage grace), retries count from the end of each failed attempt, and refreshes resume when the
  provider returns;
- provider answers too late (the hub timed out after the provider rotated the refresh token): the
  spent token is never sent again, so the provider does not revoke the grant, and the session lives
  on within the grace.
"""

from __future__ import annotations

import json
import threading
import time

import jwt
import pytest
import requests
from facilities import make_facility
from helpers import admin_api, http_login
from token_proxy import TokenProxy

ACCESS_TTL = 5
RETRY = 2
SITE = {"auth": {"auth_refresh_age": 1, "refresh_margin": 2, "refresh_retry_interval": RETRY,
                 "refresh_timeout": 3, "provider_outage_grace": 120}}


@pytest.fixture(scope="module")
def proxy():
    """Between the hub and the provider's token endpoint (passes everything unless told to hold)."""
    server = TokenProxy()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def fac(tmp_path_factory, admin_token, proxy):
    facility = make_facility(tmp_path_factory.mktemp("provider-realism") / "state", admin_token,
                             name="provider-realism", site=SITE,
                             idp_overrides={"access_token_ttl": ACCESS_TTL, "userinfo_only_claims": ["groups"]})
    proxy.upstream = f"{facility.idp_url}/token"
    facility.site_overrides["auth"] = {**facility.site_overrides["auth"], "token_url": proxy.url}
    with facility:
        yield facility


def user_token(fac, admin_token: str, name: str) -> str:
    r = admin_api(fac.hub_url, admin_token, f"/users/{name}/tokens", method="POST",
                  json={"scopes": ["read:users!user", "custom:casa-tokens:renew!user"], "note": "test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def set_groups_at_provider(fac, username: str, groups: list[str]) -> None:
    """What an IdP admin does: change the user's groups (the provider restarts with its state kept)."""
    config_file = fac.state_dir / "idp" / "config.json"
    config = json.loads(config_file.read_text())
    for user in config["users"]:
        if user["username"] == username:
            user["groups"] = groups
    fac.stop_process("idp")
    config_file.write_text(json.dumps(config))
    fac.start_idp()


def test_groups_only_in_userinfo_are_read_at_login_and_again_at_every_refresh(fac, admin_token):
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200, r.text[:300]
    model = admin_api(fac.hub_url, admin_token, "/users/alice").json()
    assert model["groups"] == ["physicists"], "groups from userinfo decide at login"
    id_claims = jwt.decode(model["auth_state"]["id_token"], options={"verify_signature": False})
    assert "groups" not in id_claims, "this provider releases groups through userinfo only"
    token = user_token(fac, admin_token, "alice")
    broker = f"{fac.hub_url}/hub/api/casa/tokens/xcache"
    assert requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200

    set_groups_at_provider(fac, "alice", ["visitors"])
    time.sleep(ACCESS_TTL)  # the access token is due for a refresh
    r = requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 403, f"a user removed from the group still gets tokens: {r.status_code} {r.text[:200]}"
    assert "token" not in r.json()
    log = (fac.log_dir / "hub.log").read_text()
    assert "alice must sign in again: the account is no longer in an allowed group" in log
    after = admin_api(fac.hub_url, admin_token, "/users/alice").json()["auth_state"]
    assert after["casa_oidc"]["login_required"] and "refresh_token" not in after
    for _ in range(5):  # the browser session keeps asking: each request is sent to the login, no traceback
        page = s.get(f"{fac.hub_url}/hub/api/user", timeout=30)
        assert page.status_code == 403, page.status_code
    log = (fac.log_dir / "hub.log").read_text()
    assert "Traceback" not in log and "_token_authenticated" not in log, "a traceback per request"

    set_groups_at_provider(fac, "alice", ["physicists"])  # back: the next login restores everything
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    assert requests.post(broker, headers={"Authorization": f"token {user_token(fac, admin_token, 'alice')}"},
                         timeout=30).status_code == 200


def hub_log(fac) -> str:
    return (fac.log_dir / "hub.log").read_text()


def meta(fac, admin_token: str, name: str) -> dict:
    return admin_api(fac.hub_url, admin_token, f"/users/{name}").json()["auth_state"]["casa_oidc"]


@pytest.mark.slow(35)
def test_a_provider_outage_longer_than_the_access_token_keeps_sessions_and_tokens(fac, admin_token):
    s, r = http_login(fac.hub_url, "bob", fac.password("bob"))
    assert r.status_code == 200
    token = user_token(fac, admin_token, "bob")
    broker = f"{fac.hub_url}/hub/api/casa/tokens/xcache"
    before = meta(fac, admin_token, "bob")

    fac.stop_process("idp")
    stopped = time.time()
    jtis = set()
    while time.time() - stopped < 30:  # six access-token lifetimes without a provider
        r = requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 200, f"broker refused during the outage: {r.status_code} {r.text[:200]}"
        jtis.add(r.json()["jti"])
        assert s.get(f"{fac.hub_url}/hub/api/user", timeout=10).status_code == 200, "the browser session ended"
        time.sleep(2)
    assert len(jtis) > 5, "fresh facility tokens all through the outage"
    during = meta(fac, admin_token, "bob")
    assert not during.get("login_required") and during["generation"] == before["generation"]
    assert "their session and facility tokens are kept until" in hub_log(fac)

    attempts = [line for line in hub_log(fac).splitlines()
                if "Cannot refresh bob's provider tokens" in line and "HTTP 502" in line]
    assert attempts, "the hub tried to refresh during the outage"
    assert len(attempts) <= 30 / RETRY + 1, f"retried more often than every {RETRY} s: {len(attempts)}"

    fac.start_idp()
    deadline = time.time() + 30
    while meta(fac, admin_token, "bob")["generation"] == before["generation"] and time.time() < deadline:
        requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30)
        time.sleep(1)
    after = meta(fac, admin_token, "bob")
    assert after["generation"] > before["generation"], "the refresh resumed when the provider returned"
    assert not after.get("login_required")


@pytest.mark.slow(20)
def test_a_refresh_answered_too_late_is_never_sent_again(fac, admin_token, proxy):
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    token = user_token(fac, admin_token, "alice")
    broker = f"{fac.hub_url}/hub/api/casa/tokens/xcache"
    sent_before = len(proxy.answers)
    proxy.hold = 6  # longer than the hub's refresh_timeout (3 s)
    try:
        deadline = time.time() + 30
        while not meta(fac, admin_token, "alice").get("refresh_uncertain") and time.time() < deadline:
            assert requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200
            time.sleep(1)
        assert meta(fac, admin_token, "alice").get("refresh_uncertain"), "the timeout was not noticed"
        time.sleep(proxy.hold)
    finally:
        proxy.hold = 0
    lost = [answer for status, answer in proxy.answers[sent_before:] if status == 200]
    assert len(lost) == 1, "exactly one refresh reached the provider"
    for _ in range(6):  # well past the retry interval: the session goes on, the spent token stays unsent
        r = requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 200, r.text[:200]
        time.sleep(1)
    assert len(proxy.answers) == sent_before + 1, "the spent refresh token was sent again"
    assert "its refresh token is not sent again" in hub_log(fac)
    secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
    discovery = requests.get(f"{fac.idp_url}/.well-known/openid-configuration", timeout=10).json()
    intro = requests.post(discovery["introspection_endpoint"], auth=("casa-hub", secret),
                          data={"token": lost[0]["refresh_token"]}, timeout=10).json()
    assert intro["active"] is True, "the provider did not revoke the grant (no reuse of a spent token)"
