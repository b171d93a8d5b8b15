"""Identity as real providers do it, against the real provider and hub.

- a hub account is bound to the provider identity (``iss`` + ``sub``) of its first login: a second
  provider account whose ``preferred_username`` is ``Bob`` (or ``BOB``) cannot sign in as ``bob``;
  the refusal is audited and nothing of bob's changes; an admin re-binds deliberately;
- signing out changes state only by the confirmation page's POST with the hub's XSRF token: a
  cross-site link (a GET with the user's cookies) or a POST without the token signs nobody out;
- values from requests and from the provider cannot forge log lines (the audit ``mint`` line);
- group names with control characters never reach JupyterHub's groups.

The provider registers this hub's client with ``client_secret_post`` (``basic_auth: false`` in the
site file): sign-in, refresh and revocation all authenticate that way.
"""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import quote

import pytest
import requests
from facilities import make_facility
from helpers import admin_api, http_login, http_logout

PHYSICIST = {"groups": ["physicists"]}
#: a forged audit line, as an attacker would hide it in a URL or a group name
FORGED = "mint user=mallory grant=operations jti=forged scope='storage.read:/' aud=x exp=1"
EXTRA_USERS = [
    # other provider accounts presenting bob's name: another subject each
    dict(PHYSICIST, username="bob-twin", sub="bob-twin-subject", claims={"preferred_username": "Bob"}),
    dict(PHYSICIST, username="bob-caps", sub="bob-caps-subject", claims={"preferred_username": "BOB"}),
    # a group name carrying a newline and a forged audit line
    dict(username="gina", groups=["physicists", f"x\n{FORGED}", "ok\u2028also"]),
]


@pytest.fixture(scope="module")
def idp(tmp_path_factory, admin_token):
    fac = make_facility(tmp_path_factory.mktemp("identity") / "state", admin_token, name="identity",
                        site={"auth": {"basic_auth": False}})
    fac.prepare()
    users = [*fac.users(), *EXTRA_USERS]
    for u in users:
        u.setdefault("password", secrets.token_urlsafe(12))
    client = json.loads((fac.state_dir / "idp" / "config.json").read_text())["clients"][0]
    fac.idp_overrides = {"users": users, "clients": [dict(client, token_endpoint_auth_method="client_secret_post")]}
    fac.passwords = {u["username"]: u["password"] for u in users}
    with fac:
        yield fac


def hub_log(fac) -> str:
    return (fac.log_dir / "hub.log").read_text(errors="replace")


def bound(fac, admin_token: str, name: str) -> dict:
    return admin_api(fac.hub_url, admin_token, f"/users/{name}").json()["auth_state"]["casa_identity"]


def test_a_second_account_with_the_same_name_cannot_take_over_the_hub_account(idp, admin_token):
    """bob signs in first and is bound; accounts presenting "Bob" and "BOB" with other subjects are
    refused with a message saying what to do, audited, and bob's account keeps its binding and tokens."""
    s, r = http_login(idp.hub_url, "bob", idp.passwords["bob"])
    assert r.status_code == 200, r.text[:300]
    binding = bound(idp, admin_token, "bob")
    assert binding["sub"] == "bob" and binding["iss"] == idp.idp_url
    state_before = admin_api(idp.hub_url, admin_token, "/users/bob").json()["auth_state"]
    users_before = {u["name"] for u in admin_api(idp.hub_url, admin_token, "/users").json()}

    for twin in ("bob-twin", "bob-caps"):
        s2, r2 = http_login(idp.hub_url, twin, idp.passwords[twin])
        assert r2.status_code == 403, f"{twin} signed in as bob: {r2.status_code} {r2.url}"
        assert "belongs to another account at the identity provider" in r2.text
        assert "re-bind" in r2.text, "the message says what to do"
        assert s2.get(f"{idp.hub_url}/hub/api/user", timeout=10).status_code == 403, "no hub session"
    assert {u["name"] for u in admin_api(idp.hub_url, admin_token, "/users").json()} == users_before

    state_after = admin_api(idp.hub_url, admin_token, "/users/bob").json()["auth_state"]
    assert state_after["casa_identity"] == binding, "the binding is unchanged"
    assert state_after["refresh_token"] == state_before["refresh_token"], "bob's provider tokens are untouched"
    assert state_after["oauth_user"]["sub"] == "bob"
    log = hub_log(idp)
    for subject in ("bob-twin-subject", "bob-caps-subject"):
        refusal = [line for line in log.splitlines() if "identity refused user=bob" in line and subject in line]
        assert len(refusal) == 1, f"one audit line for {subject}"
        assert 'bound_sub="bob"' in refusal[0]
    assert s.get(f"{idp.hub_url}/hub/api/user", timeout=10).json()["name"] == "bob", "bob is still signed in"


def test_an_admin_re_binds_an_account_deliberately(idp, admin_token):
    """Only an admin may remove a binding (audited); the next login of another subject then binds anew."""
    assert http_login(idp.hub_url, "bob", idp.passwords["bob"])[1].status_code == 200  # bound at first login
    assert http_login(idp.hub_url, "alice", idp.passwords["alice"])[1].status_code == 200
    made = admin_api(idp.hub_url, admin_token, "/users/alice/tokens", method="POST", json={"note": "t"})
    alices = {"Authorization": f"token {made.json()['token']}"}
    for method in ("GET", "DELETE"):
        refused = requests.request(method, f"{idp.hub_url}/hub/api/casa/identity/bob", headers=alices, timeout=10)
        assert refused.status_code in (403, 404), f"a user may not see or remove another account's binding ({method})"
    assert bound(idp, admin_token, "bob")["sub"] == "bob"

    shown = admin_api(idp.hub_url, admin_token, "/casa/identity/bob")
    assert shown.status_code == 200 and shown.json()["identity"]["sub"] == "bob"
    assert admin_api(idp.hub_url, admin_token, "/casa/identity/bob", method="DELETE").status_code == 204
    assert any("identity unbound user=bob" in line and 'by="casa-test-admin"' in line
               for line in hub_log(idp).splitlines())
    s, r = http_login(idp.hub_url, "bob-twin", idp.passwords["bob-twin"])
    assert r.status_code == 200, "after the admin's re-bind the other account may sign in"
    assert bound(idp, admin_token, "bob")["sub"] == "bob-twin-subject"
    assert admin_api(idp.hub_url, admin_token, "/casa/identity/nobody").status_code == 404


def test_a_cross_site_link_cannot_sign_a_user_out(idp, admin_token):
    """GET /hub/logout (what a link or an image on another site causes, with the user's cookies)
    only shows the confirmation page; a POST without the XSRF token is refused; the user stays signed
    in and the provider's refresh token stays valid until the real sign-out."""
    s, r = http_login(idp.hub_url, "alice", idp.passwords["alice"])
    assert r.status_code == 200
    refresh_token = admin_api(idp.hub_url, admin_token, "/users/alice").json()["auth_state"]["refresh_token"]

    page = s.get(f"{idp.hub_url}/hub/logout", headers={"Sec-Fetch-Site": "cross-site"}, timeout=10)
    assert page.status_code == 200 and "Sign out of" in page.text and 'name="_xsrf"' in page.text
    forged = s.post(f"{idp.hub_url}/hub/logout", headers={"Origin": "https://evil.example"}, timeout=10)
    assert forged.status_code == 403, "a POST without the hub's XSRF token is refused"
    assert s.get(f"{idp.hub_url}/hub/api/user", timeout=10).status_code == 200, "still signed in"
    assert admin_api(idp.hub_url, admin_token, "/users/alice").json()["auth_state"]["refresh_token"] == refresh_token

    done = http_logout(s, idp.hub_url)
    assert done.status_code == 200
    assert s.get(f"{idp.hub_url}/hub/api/user", timeout=10).status_code == 403, "the confirmed sign-out worked"
    assert "refresh_token" not in admin_api(idp.hub_url, admin_token, "/users/alice").json()["auth_state"]


def test_request_and_provider_values_cannot_forge_log_lines(idp, admin_token):
    """A URL-encoded newline in the broker's grant name and in a page path, and a newline in a
    provider group name, end up escaped on the line that logs them: no log line starts with the
    forged audit text, and the forged group reaches neither JupyterHub's groups nor a token."""
    s, r = http_login(idp.hub_url, "alice", idp.passwords["alice"])
    assert r.status_code == 200
    xsrf = s.cookies.get("_xsrf", "")
    injected = quote(f"xcache\n{FORGED}", safe="")
    for _ in range(12):  # past the broker's burst, so its rate-limit line logs the grant name too
        r = s.post(f"{idp.hub_url}/hub/api/casa/tokens/{injected}", headers={"X-XSRFToken": xsrf}, timeout=10)
        assert r.status_code in (404, 429), r.text[:200]
    assert s.get(f"{idp.hub_url}/hub/casa/facility{quote(chr(10) + FORGED, safe='')}", timeout=10).status_code == 404

    g, r = http_login(idp.hub_url, "gina", idp.passwords["gina"])
    assert r.status_code == 200, "the other groups still count"
    groups = admin_api(idp.hub_url, admin_token, "/users/gina").json()["groups"]
    assert groups == ["physicists"], groups

    log = hub_log(idp)
    assert not re.search(r"^\s*mint user=mallory", log, re.M), "a forged audit line"
    assert "ok\u2028also" not in log, "a Unicode line separator is escaped too"
    assert "Ignoring 2 group name(s) with control characters" in log
    every_line_is_a_record = [line for line in log.splitlines()
                              if "mallory" in line and not line.startswith("[")]
    assert every_line_is_a_record == [], every_line_is_a_record

