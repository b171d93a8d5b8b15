"""Staying signed in and signing out, against the real provider with short-lived access tokens.

The provider issues 20 s access tokens and rotating refresh tokens; the hub refreshes 15 s before
expiry, so a refresh is due 5 s after each login or refresh."""

from __future__ import annotations

import re
import threading
import time
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from facilities import running_facility
from helpers import (
    admin_api,
    http_login,
    http_logout,
    login_and_start_server,
    read_server_environ,
)

from casa_hub.demo.facility import DemoFacility

pytestmark = pytest.mark.e2e

ACCESS_TTL = 20
MARGIN = 15


@pytest.fixture(scope="module")
def fac(tmp_path_factory, admin_token):
    config = ("c.CasaOIDCAuthenticator.auth_refresh_age = 1\n"
              f"c.CasaOIDCAuthenticator.refresh_margin = {MARGIN}\n"
              "c.CasaOIDCAuthenticator.refresh_retry_interval = 1\n"
              # no outage grace here: the session ends when the access token expires (the grace is
              # tested in test_provider_groups.py)
              "c.CasaOIDCAuthenticator.provider_outage_grace = 0\n")
    with running_facility(tmp_path_factory, "refresh", admin_token, config,
                          idp_overrides={"access_token_ttl": ACCESS_TTL}) as facility:
        yield facility


def auth_state(fac: DemoFacility, admin_token: str, name: str) -> dict:
    r = admin_api(fac.hub_url, admin_token, f"/users/{name}")
    assert r.status_code == 200, r.text
    return r.json()["auth_state"]


def user_token(fac: DemoFacility, admin_token: str, name: str) -> str:
    r = admin_api(fac.hub_url, admin_token, f"/users/{name}/tokens", method="POST",
                  json={"scopes": ["read:users!user", "custom:casa-tokens:renew!user"], "note": "test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def wait_for_refresh_due(state: dict) -> None:
    due = state["casa_oidc"]["access_expires_at"] - MARGIN
    time.sleep(max(0.0, due - time.time()) + 0.5)


def hub_log(fac: DemoFacility) -> str:
    return (fac.log_dir / "hub.log").read_text()


def metric(fac: DemoFacility, admin_token: str, name: str, **labels: str) -> float:
    text = admin_api(fac.hub_url, admin_token, "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow(15)
def test_refresh_happens_once_for_twenty_concurrent_requests(fac, admin_token):
    server = login_and_start_server(fac.hub_url, admin_token, "alice", fac.password("alice"))
    token_dir = Path(read_server_environ(server["servers"][""]["state"]["pid"])["CASA_TOKEN_DIR"])
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    before = auth_state(fac, admin_token, "alice")
    assert before["casa_oidc"]["generation"] == 0 and before["refresh_token"]
    token = user_token(fac, admin_token, "alice")
    refreshes_ok = metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count", outcome="ok")

    wait_for_refresh_due(before)
    log_before = len(hub_log(fac))  # a refresh may have happened while the server started (slow machines)
    statuses: list[int] = []
    barrier = threading.Barrier(20)

    def request() -> None:
        barrier.wait()
        statuses.append(requests.get(f"{fac.hub_url}/hub/api/user",
                                     headers={"Authorization": f"token {token}"}, timeout=60).status_code)

    threads = [threading.Thread(target=request) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 20

    after = auth_state(fac, admin_token, "alice")
    assert after["casa_oidc"]["generation"] == 1, "exactly one refresh for 20 concurrent requests"
    assert hub_log(fac)[log_before:].count("Refreshed alice's provider tokens") == 1
    assert after["refresh_token"] != before["refresh_token"], "the provider rotates refresh tokens"
    assert after["access_token"] != before["access_token"]
    for grant in ("xcache", "htcondor"):
        assert after["casa_tokens"][grant]["jti"] != before["casa_tokens"][grant]["jti"], "re-minted"
    assert (token_dir / "xcache.token").read_text() == after["casa_tokens"]["xcache"]["token"], \
        "the running server's token file holds the re-minted token"
    assert metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count", outcome="ok") \
        == refreshes_ok + 1

    # the rotated refresh token was not spent twice: the next refresh works as well
    wait_for_refresh_due(after)
    assert s.get(f"{fac.hub_url}/hub/home", timeout=30).status_code == 200
    assert auth_state(fac, admin_token, "alice")["casa_oidc"]["generation"] == 2
    assert before["refresh_token"] not in hub_log(fac) and after["refresh_token"] not in hub_log(fac)


def test_revoked_refresh_token_sends_user_to_login_and_stops_the_broker(fac, admin_token):
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    state = auth_state(fac, admin_token, "alice")
    token = user_token(fac, admin_token, "alice")
    broker = f"{fac.hub_url}/hub/api/casa/tokens/xcache"
    assert requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200

    secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
    discovery = requests.get(f"{fac.idp_url}/.well-known/openid-configuration", timeout=10).json()
    revoked = requests.post(discovery["revocation_endpoint"], auth=("casa-hub", secret), timeout=10,
                            data={"token": state["refresh_token"], "token_type_hint": "refresh_token"})
    assert revoked.status_code == 200

    wait_for_refresh_due(state)
    page = s.get(f"{fac.hub_url}/hub/home", allow_redirects=False, timeout=30)
    assert page.status_code == 302 and "/hub/login" in page.headers["Location"], "a new login is required"
    r = requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 403 and "sign in" in r.json()["message"] and "token" not in r.json()
    after = auth_state(fac, admin_token, "alice")
    assert after["casa_oidc"]["login_required"] and "refresh_token" not in after

    # signing in again restores everything
    s2, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    assert requests.post(broker, headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200


def test_logout_ends_hub_and_provider_sessions_and_revokes_the_refresh_token(fac, admin_token):
    s, r = http_login(fac.hub_url, "bob", fac.password("bob"))
    assert r.status_code == 200
    refresh_token = auth_state(fac, admin_token, "bob")["refresh_token"]

    page = http_logout(s, fac.hub_url)
    assert page.url.startswith(fac.idp_url), "the browser is sent to the provider's end-session page"
    to_provider = next(h.headers["Location"] for h in page.history
                       if h.headers.get("Location", "").startswith(fac.idp_url))
    assert "client_id=casa-hub" in to_provider and "post_logout_redirect_uri=" in to_provider
    assert "id_token_hint" not in to_provider and refresh_token not in to_provider
    form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page.text, re.S)
    assert form, page.text[:500]
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2)))
    done = s.post(urljoin(page.url, unescape(form.group(1))), data=fields, timeout=30)
    assert done.url.startswith(f"{fac.hub_url}/hub/login"), done.url

    assert s.get(f"{fac.hub_url}/hub/api/user", timeout=30).status_code == 403, "hub session ended"
    secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
    discovery = requests.get(f"{fac.idp_url}/.well-known/openid-configuration", timeout=10).json()
    intro = requests.post(discovery["introspection_endpoint"], auth=("casa-hub", secret),
                          data={"token": refresh_token}, timeout=10).json()
    assert intro["active"] is False, "the refresh token is revoked at the provider"
    assert "refresh_token" not in auth_state(fac, admin_token, "bob")
    relogin = s.get(f"{fac.hub_url}/hub/oauth_login?next=/hub/home", timeout=30)
    assert 'name="password"' in relogin.text, "the provider session ended: the password is asked again"


@pytest.mark.slow(20)
def test_provider_down_without_grace_keeps_user_signed_in_until_tokens_expire(fac, admin_token):
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    state = auth_state(fac, admin_token, "alice")
    failures = metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count",
                      outcome="provider_unavailable")
    idp = fac.procs["idp"]
    idp.terminate()
    idp.wait(30)

    wait_for_refresh_due(state)
    assert s.get(f"{fac.hub_url}/hub/home", allow_redirects=False, timeout=30).status_code == 200
    assert "refresh is retried" in hub_log(fac)
    assert metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count",
                  outcome="provider_unavailable") > failures

    time.sleep(max(0.0, state["casa_oidc"]["access_expires_at"] - time.time()) + 1.5)
    page = s.get(f"{fac.hub_url}/hub/home", allow_redirects=False, timeout=30)
    assert page.status_code == 302 and "/hub/login" in page.headers["Location"]
    assert auth_state(fac, admin_token, "alice")["casa_oidc"]["login_required"]
