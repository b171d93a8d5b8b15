"""Hostile logins through the real provider and the hub's real callback: refused, and nothing stored.

The hub of this module talks to the provider's token endpoint through a small proxy run by the test
(``token_url`` set by an extra hub config file). It is ``shared_integrations_facility``
(tests/support/shared_facilities.py), where only alice has signed in before (test_integration_*.py,
which stop her server when they end) and whose provider has the second client and the hostile users. The proxy passes the provider's answers through, or
swaps the ID token for a tampered one, one issued to another client (same nonce, real signature), or
one from another issuer that signs with the same key. Every refusal is checked in the page (status,
message, no token or secret) and in the hub's database, opened read-only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from html import unescape
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import jwt
import pytest
import requests
from helpers import FORM_ACTION, admin_api, http_login, start_login, submit_login
from shared_facilities import OTHER_REDIRECT
from shared_facilities import REJECTED_NAMES as HOSTILE_NAMES
from token_proxy import TokenProxy

from casa_hub.demo.facility import PROVIDER_SCRIPT, DemoFacility, _http_status, free_port

pytestmark = pytest.mark.e2e



# ---- a token endpoint proxy that can rewrite the provider's answer -------------------------------

# ---- helpers -------------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(id_token: str, **claims: object) -> str:
    """The same header and signature over a changed payload."""
    header, payload, signature = id_token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join([header, b64url(json.dumps(dict(body, **claims)).encode()), signature])


def follow_until(s: requests.Session, r: requests.Response, prefix: str) -> str:
    """Follow redirects by hand until one points at ``prefix``; return that URL unvisited."""
    for _ in range(10):
        location = r.headers.get("Location")
        assert r.is_redirect and location, f"expected a redirect towards {prefix}, got {r.status_code} {r.url}"
        url = urljoin(r.url, location)
        if url.startswith(prefix):
            return url
        r = s.get(url, allow_redirects=False, timeout=30)
    raise AssertionError(f"no redirect to {prefix}")


def hub_nonce(login_page: requests.Response) -> str:
    """The nonce the hub sent to the provider, read from the authorization redirect."""
    for r in login_page.history:
        query = parse_qs(urlparse(r.headers.get("Location", "")).query)
        if "nonce" in query:
            return query["nonce"][0]
    raise AssertionError("the hub's authorization request carried no nonce")


def id_token_from(idp_url: str, client: tuple[str, str], user: tuple[str, str], nonce: str) -> str:
    """A genuine ID token for ``user``, obtained by ``client`` through the provider's code flow."""
    meta = requests.get(f"{idp_url}/.well-known/openid-configuration", timeout=10).json()
    verifier = secrets.token_urlsafe(32)
    s = requests.Session()
    form = s.get(meta["authorization_endpoint"], timeout=30, params={
        "response_type": "code", "client_id": client[0], "redirect_uri": OTHER_REDIRECT, "nonce": nonce,
        "scope": "openid profile email groups", "state": secrets.token_urlsafe(8),
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()), "code_challenge_method": "S256",
    })
    action = urljoin(form.url, unescape(FORM_ACTION.search(form.text).group(1)))
    r = s.post(action, data={"username": user[0], "password": user[1]}, allow_redirects=False, timeout=30)
    code = parse_qs(urlparse(follow_until(s, r, OTHER_REDIRECT)).query)["code"][0]
    answer = requests.post(meta["token_endpoint"], auth=client, timeout=30, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": OTHER_REDIRECT,
        "code_verifier": verifier,
    })
    answer.raise_for_status()
    return answer.json()["id_token"]


def until_callback(hub_url: str, username: str, password: str) -> tuple[requests.Session, str]:
    """Sign in at the provider; return the session and the hub callback URL, not yet visited."""
    s, form = start_login(hub_url)
    action = urljoin(form.url, unescape(FORM_ACTION.search(form.text).group(1)))
    r = s.post(action, data={"username": username, "password": password}, allow_redirects=False, timeout=30)
    return s, follow_until(s, r, f"{hub_url}/hub/oauth_callback")


def db_snapshot(fac: DemoFacility) -> dict[str, object]:
    """Per-user rows of the hub database (activity times left out), read without locking it for writes."""
    db = sqlite3.connect(f"file:{fac.state_dir / 'jupyterhub.sqlite'}?mode=ro", uri=True)
    try:
        q = lambda sql: sorted(db.execute(sql).fetchall(), key=repr)  # noqa: E731
        return {
            "users": q("SELECT name, admin, cookie_id, encrypted_auth_state FROM users"),
            "groups": q("SELECT u.name, g.name FROM user_group_map m JOIN users u ON u.id = m.user_id "
                        "JOIN groups g ON g.id = m.group_id"),
            "api_tokens": q("SELECT id, user_id, session_id, scopes FROM api_tokens WHERE user_id IS NOT NULL"),
            "oauth_codes": q("SELECT id, user_id FROM oauth_codes"),
            "spawners": q("SELECT id, user_id, name FROM spawners"),
        }
    finally:
        db.close()


def user_names(snapshot: dict) -> set[str]:
    return {row[0] for row in snapshot["users"]}


def assert_refused(fac: DemoFacility, proxy: TokenProxy, r: requests.Response, status: int, message: str) -> None:
    text = unescape(r.text)
    assert r.status_code == status, f"expected {status}, got {r.status_code} at {r.url}: {text[:300]}"
    assert r.url.startswith(fac.hub_url), f"the refusal should come from the hub, not {r.url}"
    assert message in text, f"expected {message!r} in the hub's page:\n{text[:1500]}"
    client_secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
    hub_log = (fac.log_dir / "hub.log").read_text(errors="replace")
    for value in [*proxy.secrets, client_secret]:
        for part in {value, value.split(".")[-1]}:
            assert part not in r.text, "a token or secret is echoed in the page"
            assert part not in hub_log, "a token or secret is in the hub's log"


# ---- the facility under attack -------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy(shared_token_proxy) -> TokenProxy:
    """Between the hub and the provider's token endpoint, since the facility started."""
    return shared_token_proxy


@pytest.fixture(scope="module")
def hostile(shared_integrations_facility, proxy, tmp_path_factory):
    """A facility whose provider also knows a second client (``other_client``) and users with hostile
    claims (``passwords``), and another provider that signs with the same key (``other_issuer_url``)."""
    fac = shared_integrations_facility
    tmp = tmp_path_factory.mktemp("rejections")
    secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
    # another provider that signs with the same key under another issuer name
    port = free_port()
    config = tmp / "other-idp.json"
    config.write_text(json.dumps({
        "issuer": f"http://127.0.0.1:{port}",
        "clients": [{"client_id": "casa-hub", "client_secret": secret, "redirect_uris": [OTHER_REDIRECT]}],
        "users": [u for u in fac.idp_overrides["users"] if u["username"] == "alice"],
        "jwks_file": str(fac.state_dir / "idp" / "idp-signing-keys.json"),
    }))
    config.chmod(0o600)
    with open(tmp / "other-idp.log", "wb") as log:
        other_issuer = subprocess.Popen(
            [shutil.which("node"), str(PROVIDER_SCRIPT), str(config)], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, CASA_NODE_MODULES=str(fac.node_modules)))
    try:
        for _ in range(300):
            assert other_issuer.poll() is None, (tmp / "other-idp.log").read_text()
            if _http_status(f"http://127.0.0.1:{port}/healthz") == 200:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the second provider did not start:\n{(tmp / 'other-idp.log').read_text()}")
        fac.other_issuer_url = f"http://127.0.0.1:{port}"
        yield fac
    finally:
        other_issuer.terminate()
        other_issuer.wait(30)


@pytest.fixture(scope="module")
def alice_signed_in(hostile, proxy):
    """Alice has signed in once (through the proxy, untouched): she exists with auth_state."""
    proxy.rewrite = None
    s, r = http_login(hostile.hub_url, "alice", hostile.passwords["alice"])
    assert r.status_code == 200 and r.url.startswith(hostile.hub_url), r.text[:500]
    snapshot = db_snapshot(hostile)
    assert "alice" in user_names(snapshot)
    assert next(row for row in snapshot["users"] if row[0] == "alice")[3], "alice has no auth_state"
    return s


# ---- forged ID tokens through the real callback -------------------------------------------------

def _tampered_to_admin(fac: DemoFacility, nonce: str):
    return lambda original: tampered(original, preferred_username="bob", groups=["physicists", "facility-admins"])


def _for_another_client(fac: DemoFacility, nonce: str):
    token = id_token_from(fac.idp_url, fac.other_client, ("alice", fac.passwords["alice"]), nonce)
    return lambda original: token


def _from_another_issuer(fac: DemoFacility, nonce: str):
    secret = (fac.state_dir / "secrets" / "oidc_client_secret").read_text()
    token = id_token_from(fac.other_issuer_url, ("casa-hub", secret), ("alice", fac.passwords["alice"]), nonce)
    return lambda original: token


@pytest.mark.parametrize("make, reason", [
    (_tampered_to_admin, "Signature verification failed"),
    (_for_another_client, "Audience doesn't match"),
    (_from_another_issuer, "Invalid issuer"),
], ids=["tampered payload", "wrong audience", "wrong issuer"])
def test_forged_id_token_is_refused_and_nothing_stored(hostile, proxy, alice_signed_in, make, reason):
    """Alice signs in; the ID token the hub receives is swapped (same nonce; genuine signature
    except for the tampered payload)."""
    before = db_snapshot(hostile)
    s, form = start_login(hostile.hub_url)
    nonce = hub_nonce(form)
    forge = make(hostile, nonce)
    prepared = {}

    def swap(answer: dict) -> dict:
        prepared["id_token"] = forge(answer["id_token"])
        return dict(answer, id_token=prepared["id_token"])

    proxy.rewrite = swap
    try:
        r = submit_login(s, form, "alice", hostile.passwords["alice"])
    finally:
        proxy.rewrite = None
    assert prepared.get("id_token"), "the hub did not ask the provider for tokens"
    forged = jwt.decode(prepared["id_token"], options={"verify_signature": False})
    assert (forged["nonce"], forged["sub"]) == (nonce, "alice"), "the forged token should answer this login"
    assert_refused(hostile, proxy, r, 403, f"Sign-in failed: the ID token is invalid ({reason})")
    assert db_snapshot(hostile) == before, "a refused login changed the hub database"
    assert "bob" not in user_names(before)
    assert requests.get(f"{hostile.hub_url}/hub/api/user", cookies=s.cookies, timeout=10).status_code == 403


# ---- replayed code and state mismatch --------------------------------------------------------------

def test_replayed_code_is_refused_and_first_session_is_kept(hostile, proxy, alice_signed_in):
    s, callback = until_callback(hostile.hub_url, "alice", hostile.passwords["alice"])
    copied = requests.cookies.cookiejar_from_dict(s.cookies.get_dict())  # state and nonce cookies, as sent
    first = s.get(callback, timeout=60)
    assert first.status_code == 200 and first.url.startswith(f"{hostile.hub_url}/hub/"), first.text[:500]
    after_first = db_snapshot(hostile)
    answers = len(proxy.answers)

    replay = requests.get(callback, cookies=copied, timeout=60)
    assert_refused(hostile, proxy, replay, 403, "The identity provider refused to complete the sign-in")
    status, answer = proxy.answers[answers]
    assert (status, answer.get("error")) == (400, "invalid_grant"), "the provider should refuse the used code"
    assert "jupyterhub-hub-login" not in replay.cookies, "the replay got a hub session"
    code = parse_qs(urlparse(callback).query)["code"][0]
    assert code not in (hostile.log_dir / "hub.log").read_text(errors="replace"), \
        "the authorization code of a refused callback is in the hub's log"
    assert db_snapshot(hostile) == after_first, "the replay changed the hub database"
    me = requests.get(f"{hostile.hub_url}/hub/api/user", cookies=s.cookies, timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "alice", "the first session no longer works"


def _another_logins_state(fac: DemoFacility) -> str:
    _, form = start_login(fac.hub_url)
    location = next(r.headers["Location"] for r in form.history if "state=" in r.headers.get("Location", ""))
    return parse_qs(urlparse(location).query)["state"][0]


@pytest.mark.parametrize("attack, status, message", [
    ("state of another login", 400, "OAuth state mismatch"),
    ("no state cookie", 400, "OAuth state missing from cookies"),
], ids=["state mismatch", "no state cookie"])
def test_callback_with_foreign_state_is_refused_before_the_code_is_used(hostile, proxy, admin_token, attack, status,
                                                                       message):
    before = db_snapshot(hostile)
    s, callback = until_callback(hostile.hub_url, "frank", hostile.passwords["frank"])
    query = parse_qs(urlparse(callback).query)
    answers = len(proxy.answers)
    if attack == "state of another login":
        query["state"] = [_another_logins_state(hostile)]
        r = s.get(callback.split("?")[0] + "?" + urlencode(query, doseq=True), timeout=60)
    else:
        r = requests.get(callback, timeout=60)
    assert_refused(hostile, proxy, r, status, message)
    assert len(proxy.answers) == answers, "the hub redeemed the code despite the bad state"
    assert db_snapshot(hostile) == before and "frank" not in user_names(before)
    assert admin_api(hostile.hub_url, admin_token, "/users/frank").status_code == 404


# ---- usernames ------------------------------------------------------------------------------------

def test_missing_username_claim_is_refused(hostile, proxy):
    before = db_snapshot(hostile)
    s, r = http_login(hostile.hub_url, "nameless", hostile.passwords["nameless"])
    assert_refused(hostile, proxy, r, 403,
                   "Sign-in failed: your account has no 'preferred_username' to use as a username")
    assert db_snapshot(hostile) == before
    assert "nameless" not in user_names(before)


@pytest.mark.parametrize("login", sorted(HOSTILE_NAMES), ids=[repr(HOSTILE_NAMES[k]) for k in sorted(HOSTILE_NAMES)])
def test_unsafe_username_is_refused_not_rewritten(hostile, proxy, login):
    before = db_snapshot(hostile)
    s, r = http_login(hostile.hub_url, login, hostile.passwords[login])
    assert_refused(hostile, proxy, r, 403, "Sign-in failed: your username cannot be used at this facility")
    after = db_snapshot(hostile)
    assert after == before, "an unsafe username changed the hub database"
    assert not {n for n in user_names(after) if n in ("bob", login) or "/" in n or not n.isprintable()}
