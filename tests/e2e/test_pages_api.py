"""``GET /hub/api/casa/facility``: the "My facility" summary for scripts, over HTTP against the
real hub of the session's demo facility. A caller reads its own summary (the broker's renew scope
for itself) or, with ``admin:auth_state``, a named user's; never another user's; never a token."""

from __future__ import annotations

import re

import pytest
import requests
from facilities import stop_servers
from helpers import admin_api, http_login, login_and_start_server, read_server_environ
from pages_support import secret_values

pytestmark = pytest.mark.e2e

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
GRANT_KEYS = {"grant", "audience", "scopes", "lifetime", "issued_at", "expires_at", "expires_in",
              "expires_at_utc", "jti", "state"}


def summary(facility, token: str | None, name: str = "") -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    path = f"/{name}" if name else ""
    return requests.get(f"{facility.hub_url}/hub/api/casa/facility{path}", headers=headers, timeout=30)


def user_token(facility, admin_token: str, username: str, scopes: list[str]) -> str:
    r = admin_api(facility.hub_url, admin_token, f"/users/{username}/tokens", method="POST",
                  json={"scopes": scopes, "expires_in": 900, "note": "test_pages_api"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def alice_token(facility, admin_token) -> str:
    """A token of alice's with the broker's scope for herself (what her server holds)."""
    _, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200, r.text[:300]
    return user_token(facility, admin_token, "alice", ["custom:casa-tokens:renew!user=alice"])


def alice_auth_state(facility, admin_token) -> dict:
    return admin_api(facility.hub_url, admin_token, "/users/alice").json()["auth_state"]


def test_own_summary_lists_grants_with_scopes_and_expiry_but_no_token(facility, admin_token, alice_token):
    r = summary(facility, alice_token)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    doc = r.json()
    assert doc["user"] == "alice" and "physicists" in doc["groups"]
    grants = {g["grant"]: g for g in doc["grants"]}
    assert set(grants) == {"xcache", "htcondor"}, "operations is for facility-admins only"
    assert grants["xcache"]["audience"] == "casa-demo-xcache"
    assert grants["xcache"]["scopes"] == ["storage.read:/user/alice"]
    assert grants["htcondor"]["scopes"] == ["compute.read", "compute.create", "compute.modify", "compute.cancel"]
    stored = alice_auth_state(facility, admin_token)
    for name, grant in grants.items():
        assert set(grant) == GRANT_KEYS, f"{name}: only metadata, never the token"
        entry = stored["casa_tokens"].get(name)
        if entry:  # recorded at login: the summary shows that token's expiry and id
            assert (grant["expires_at"], grant["jti"]) == (entry["exp"], entry["jti"])
            assert grant["expires_in"] == grant["expires_at"] - doc["generated_at"]
    assert not JWT.search(r.text), "no JWT in the summary"
    for secret in secret_values(stored):
        assert secret not in r.text
    assert {s["name"] for s in doc["services"]} >= {"xcache"}


def test_a_users_own_name_works_and_another_users_summary_is_refused(facility, alice_token):
    assert summary(facility, alice_token, "alice").json()["user"] == "alice"
    r = summary(facility, alice_token, "bob")
    assert r.status_code == 403, "alice must not read bob's summary"
    assert "grants" not in r.json(), "nothing of bob's is returned"


def test_a_credential_without_the_scope_and_no_credential_are_refused(facility, admin_token, alice_token):
    weak = user_token(facility, admin_token, "alice", ["read:users:name!user=alice"])
    assert summary(facility, weak).status_code == 403
    assert summary(facility, weak, "alice").status_code == 403
    assert summary(facility, None).status_code == 403
    assert summary(facility, "not-a-token").status_code == 403


def test_an_admin_service_reads_a_named_user_but_has_no_summary_of_its_own(facility, admin_token, alice_token):
    r = summary(facility, admin_token, "alice")
    assert r.status_code == 200 and r.json()["user"] == "alice"
    for secret in secret_values(alice_auth_state(facility, admin_token)):
        assert secret not in r.text
    assert summary(facility, admin_token).status_code == 403, "a service has no summary of its own"
    assert summary(facility, admin_token, "nobody-here").status_code == 404


@pytest.fixture(scope="module")
def dask_site(shared_dask_facility, admin_token):
    """The demo facility with its embedded Dask Gateway (a real gateway, local backend), shared with
    test_dask_gateway_e2e.py and test_renewal_e2e.py; alice's server is stopped when the module ends."""
    pytest.importorskip("dask_gateway_server")
    yield shared_dask_facility
    stop_servers(shared_dask_facility, admin_token, "alice")


def test_the_dask_section_names_the_users_cluster_from_the_real_gateway(dask_site, admin_token):
    model = login_and_start_server(dask_site.hub_url, admin_token, "alice", dask_site.password("alice"))
    env = read_server_environ(model["servers"][""]["state"]["pid"])
    token = user_token(dask_site, admin_token, "alice", ["custom:casa-tokens:renew!user=alice"])
    doc = summary(dask_site, token).json()
    assert doc["server"]["ready"] is True
    dask = doc["dask"]
    assert dask["available"] is True, dask
    assert dask["name"] == env["CASA_DASK_CLUSTER"], "the cluster the notebook was given"
    assert dask["state"] in {"pending", "running"}
    assert dask["dashboard"].startswith(dask_site.hub_url)
    assert any(s["name"] == "dask" and s["endpoint"].startswith(dask_site.hub_url) for s in doc["services"])
