"""A differently configured provider (INDIGO IAM / Keycloak style), used by configuration only.

The provider gives opaque ``sub`` values and puts groups in ``wlcg.groups`` as WLCG paths
(``/cms``, ``/cms/higgs``) under a scope of the same name; its plain ``groups`` claim holds decoys.
The hub is told, in an extra config file, to take the username from ``email`` and the groups from
``wlcg.groups``: the resulting user, groups, admin flag and minted tokens must follow those claims.
"""

from __future__ import annotations

import secrets

import pytest
import requests
from facilities import make_facility
from helpers import admin_api, http_login, verify_with_published_jwks

pytestmark = pytest.mark.e2e

#: the site file's sections for this provider (merged into the demo's site file): settings only, no code
SITE = {
    "auth": {"username_claim": "email", "groups_claim": "wlcg.groups", "extra_login_scopes": ["wlcg.groups"],
             "allowed_groups": ["cms"], "admin_groups": ["cms/admins"]},
    "tokens": {"grants": {
        "xcache": {"audience": "cms-xcache", "scopes": ["storage.read:/user/{username}"], "groups": ["cms"]},
        "higgs": {"audience": "cms-xcache", "scopes": ["storage.read:/higgs"], "groups": ["cms/higgs"]},
        "atlas": {"audience": "atlas-xcache", "scopes": ["storage.read:/atlas"], "groups": ["atlas"]},
    }},
}

IAM_CLAIMS = {
    "openid": ["sub"],
    "profile": ["name", "preferred_username"],
    "email": ["email"],
    "groups": ["groups"],
    "wlcg.groups": ["wlcg.groups"],
}

CAROL = {
    "username": "carol", "sub": "6f1c2a0e-3d4b-4c5a-9e8f-0a1b2c3d4e5f", "name": "Carol Higgs",
    "email": "Carol.Higgs@Uni.example", "groups": ["visitors"],
    "claims": {"wlcg.groups": ["/cms", "/cms/higgs", "/cms/admins"]},
}
DAVE = {  # his plain "groups" claim would let him in; his wlcg.groups do not
    "username": "dave", "sub": "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a", "name": "Dave Atlas",
    "email": "dave@uni.example", "groups": ["cms"],
    "claims": {"wlcg.groups": ["/atlas"]},
}


@pytest.fixture(scope="module")
def iam(tmp_path_factory, admin_token):
    tmp = tmp_path_factory.mktemp("iam")
    users = [dict(u, password=secrets.token_urlsafe(12)) for u in (CAROL, DAVE)]
    fac = make_facility(tmp / "state", admin_token, name="iam", site=SITE,
                        idp_overrides={"claims": IAM_CLAIMS, "users": users})
    fac.passwords = {u["username"]: u["password"] for u in users}
    with fac:
        yield fac


def test_username_and_groups_come_from_the_configured_claims(iam, admin_token):
    s, r = http_login(iam.hub_url, "carol", iam.passwords["carol"])
    assert r.status_code == 200 and r.url == f"{iam.hub_url}/hub/home", f"{r.status_code} {r.url}: {r.text[:300]}"
    me = s.get(f"{iam.hub_url}/hub/api/user", timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "carol.higgs@uni.example"

    model = admin_api(iam.hub_url, admin_token, "/users/carol.higgs@uni.example").json()
    assert sorted(model["groups"]) == ["cms", "cms/admins", "cms/higgs"]
    assert model["admin"] is False, "facility admins are not JupyterHub admins (who may read auth_state)"
    claims = model["auth_state"]["oauth_user"]
    assert claims["sub"] == CAROL["sub"] and claims["groups"] == ["visitors"]
    assert admin_api(iam.hub_url, admin_token, "/users/carol").status_code == 404, "preferred_username was used"


def test_minted_tokens_carry_the_configured_username_and_groups(iam, admin_token):
    s, r = http_login(iam.hub_url, "carol", iam.passwords["carol"])
    assert r.status_code == 200, r.text[:300]
    state = admin_api(iam.hub_url, admin_token, "/users/carol.higgs@uni.example").json()["auth_state"]
    assert sorted(state["casa_tokens"]) == ["higgs", "xcache"], "grants should follow the wlcg.groups"
    claims = verify_with_published_jwks(state["casa_tokens"]["xcache"]["token"], iam.issuer_url, "cms-xcache")
    assert claims["sub"] == "carol.higgs@uni.example"
    assert claims["scope"] == "storage.read:/user/carol.higgs@uni.example"
    assert sorted(claims["wlcg.groups"]) == ["/cms", "/cms/admins", "/cms/higgs"]
    higgs = verify_with_published_jwks(state["casa_tokens"]["higgs"]["token"], iam.issuer_url, "cms-xcache")
    assert (higgs["sub"], higgs["scope"]) == ("carol.higgs@uni.example", "storage.read:/higgs")


def test_decoy_groups_claim_is_ignored(iam, admin_token):
    s, r = http_login(iam.hub_url, "dave", iam.passwords["dave"])
    assert r.status_code == 403, f"{r.status_code} {r.url}"
    assert "not a member of a group allowed to use this facility" in r.text
    for name in ("dave@uni.example", "dave"):
        assert admin_api(iam.hub_url, admin_token, f"/users/{name}").status_code == 404


def test_a_facility_admin_reads_no_provider_tokens_through_the_api(iam, admin_token):
    """A facility admin (from the provider's admin group) manages users and servers, but the API gives
    them no user's auth_state: the provider's access, refresh and ID tokens are readable by nobody."""
    assert http_login(iam.hub_url, "carol", iam.passwords["carol"])[1].status_code == 200
    carol = "carol.higgs@uni.example"
    made = admin_api(iam.hub_url, admin_token, f"/users/{carol}/tokens", method="POST",
                     json={"note": "admin test"})
    assert made.status_code == 201, made.text
    carols = made.json()["token"]
    headers = {"Authorization": f"token {carols}"}
    scopes = set(requests.get(f"{iam.hub_url}/hub/api/user", headers=headers, timeout=10).json()["scopes"])
    assert {"admin-ui", "list:users", "admin:servers", "delete:users"} <= scopes, "a facility admin (role by group)"
    assert not {"admin:auth_state", "admin:users"} & scopes, sorted(scopes)
    users = requests.get(f"{iam.hub_url}/hub/api/users", headers=headers, timeout=10)
    assert users.status_code == 200 and carol in {u["name"] for u in users.json()}, "admins list users"
    for name in (carol,):
        model = requests.get(f"{iam.hub_url}/hub/api/users/{name}", headers=headers, timeout=10)
        assert model.status_code == 200, model.text
        assert model.json().get("auth_state") is None, f"{name}'s auth_state must not reach an admin"
        assert "refresh_token" not in model.text and "access_token" not in model.text
    stored = admin_api(iam.hub_url, admin_token, f"/users/{carol}").json()["auth_state"]
    assert stored["refresh_token"] and stored["refresh_token"] not in users.text, "the tokens exist, unseen"

