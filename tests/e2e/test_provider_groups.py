"""A provider that releases groups through userinfo only (not in the ID token), with short access
tokens and rotating refresh tokens: the hub reads groups from userinfo at login AND at every
refresh, so a user removed from the allowed group at the provider loses the facility at the next
refresh (the broker refuses, a new login is required) instead of at the next login.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
from facilities import make_facility
from helpers import admin_api, http_login

ACCESS_TTL = 5
SITE = {"auth": {"auth_refresh_age": 1, "refresh_margin": 2, "refresh_retry_interval": 1}}


@pytest.fixture(scope="module")
def fac(tmp_path_factory, admin_token):
    facility = make_facility(tmp_path_factory.mktemp("userinfo-groups") / "state", admin_token,
                             name="userinfo-groups", site=SITE,
                             idp_overrides={"access_token_ttl": ACCESS_TTL, "userinfo_only_claims": ["groups"]})
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

    set_groups_at_provider(fac, "alice", ["physicists"])  # back: the next login restores everything
    s, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    assert requests.post(broker, headers={"Authorization": f"token {user_token(fac, admin_token, 'alice')}"},
                         timeout=30).status_code == 200
