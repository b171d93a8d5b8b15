"""Hostile inputs against a real facility (provider, hub, proxy, issuer), one table row each.

The facility of this module is the demo facility with server profiles, no broker rate limit to speak
of (so that rows do not depend on each other), and provider users whose claims are hostile: look-alike
usernames (Cyrillic, fullwidth, zero-width joiner, right-to-left override, KELVIN SIGN), an oversized
username and an oversized unrelated claim, and look-alike group names. Every row sends one hostile
input and asserts its outcome: the status and message, that no facility token was minted for a
refused request (the hub's audit log is compared), that a token handed out belongs to the caller,
that no user, server or API token was created, and that nothing is echoed unescaped. The facility is
``shared_pages_facility`` (tests/support/shared_facilities.py), shared with test_e2e_key_rotation.py,
test_fuzz_broker.py, test_profiles_e2e.py and browser/test_browser_pages.py; none of them leaves a
server of alice's running.

Rows that other files cover in depth are re-checked lightly here (forged ID tokens:
test_login_rejections.py; the bad-token matrix: test_bad_tokens.py); another user's Dask cluster is
covered by test_dask_gateway_e2e.py::test_another_user_can_neither_see_nor_use_the_cluster.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlparse

import jwt
import pytest
import requests
from helpers import FORM_ACTION, admin_api, http_login

from casa_hub.demo.facility import DemoFacility

pytestmark = pytest.mark.e2e

JWT = re.compile(r"e[w-z][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# the facility's profiles (standard for physicists, admin-gpu for facility-admins, ...) and its provider
# users with hostile claims (kate; shared_facilities.HOSTILE_NAMES, bigclaim, groupy with
# shared_facilities.LOOKALIKE_GROUPS) are set in shared_facilities.py


# ---- the facility and its callers --------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    text: str

    def json(self) -> dict:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.text)


class Ctx:
    """The facility under attack, alice's and bob's credentials, and request helpers."""

    def __init__(self, fac: DemoFacility, admin: str, passwords: dict[str, str]) -> None:
        self.fac, self.admin, self.passwords = fac, admin, passwords
        self.port = urlparse(fac.hub_url).port
        self.api_port = json.loads((fac.state_dir / "settings.json").read_text())["hub_api_port"]
        self.sessions: dict[str, requests.Session] = {}
        self.tokens: dict[str, str] = {}
        for name in ("alice", "bob", "kate"):
            s, r = self.login(name)
            assert r.status_code == 200 and r.url.startswith(fac.hub_url), r.text[:300]
            self.sessions[name] = s
            self.tokens[name] = self.api_token(name, ["custom:casa-tokens:renew!user=" + name])
        self.tokens["alice-servers"] = self.api_token("alice", ["servers!user=alice"])
        jwks = requests.get(f"{fac.issuer_url}/jwks.json", timeout=10).json()["keys"]
        self.jwks = {k["kid"]: jwt.PyJWK(k) for k in jwks}

    def __repr__(self) -> str:  # a failing row prints its arguments: never the credentials
        return f"Ctx({self.fac.hub_url})"

    def login(self, name: str) -> tuple[requests.Session, requests.Response]:
        return http_login(self.fac.hub_url, name, self.passwords[name])

    def xsrf(self, name: str) -> str:
        return self.sessions[name].cookies.get("_xsrf")

    def api_token(self, name: str, scopes: list[str], model: bool = False) -> str | dict:
        r = admin_api(self.fac.hub_url, self.admin, f"/users/{name}/tokens", method="POST",
                      json={"scopes": scopes, "note": "hostile inputs"})
        assert r.status_code == 201, r.text
        return r.json() if model else r.json()["token"]

    def raw(self, method: str, path: str, headers: dict | None = None, body: bytes = b"",
            port: int | None = None) -> Answer:
        """A request exactly as given (no client-side clean-up of the path or headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    def broker(self, grant: str = "xcache", auth: str | None = "alice", query: str = "", **kw) -> Answer:
        headers = dict(kw.pop("headers", {}))
        if auth in self.tokens:
            headers["Authorization"] = f"token {self.tokens[auth]}"
        elif auth is not None:
            headers["Authorization"] = auth
        return self.raw("POST", f"/hub/api/casa/tokens/{grant}" + (f"?{query}" if query else ""), headers, **kw)

    def mints(self) -> int:
        """How many tokens the hub has minted (its audit lines)."""
        return (self.fac.log_dir / "hub.log").read_text(errors="replace").count(" mint user=")

    def user(self, name: str) -> dict | None:
        r = admin_api(self.fac.hub_url, self.admin, f"/users/{name}")
        return r.json() if r.status_code == 200 else None

    def user_names(self) -> set[str]:
        return {u["name"] for u in admin_api(self.fac.hub_url, self.admin, "/users").json()}


@pytest.fixture(scope="module")
def x(shared_pages_facility, admin_token) -> Ctx:
    return Ctx(shared_pages_facility, admin_token, shared_pages_facility.passwords)


# ---- outcome checks ------------------------------------------------------------------------------------

def refused(x: Ctx, send: Callable[[], Answer], status: int, message: str = "") -> Answer:
    """The request is refused with ``status`` and ``message`` as JSON, no token in it, nothing minted."""
    before = x.mints()
    a = send()
    assert a.status == status, f"expected {status}, got {a.status}: {a.text[:300]}"
    if status != 431:  # 431 comes from the proxy, before the hub
        assert a.json()["status"] == status and message in (a.json()["message"] or ""), a.text[:300]
    assert not JWT.search(a.text), "a JWT in a refusal"
    assert x.mints() == before, "a token was minted for a refused request"
    return a


def own_token(x: Ctx, a: Answer, user: str = "alice", grant: str = "xcache") -> dict:
    """200 with a token for ``user``'s own grant that verifies against the published JWKS."""
    assert a.status == 200, a.text[:300]
    doc = a.json()
    kid = jwt.get_unverified_header(doc["token"])["kid"]
    claims = jwt.decode(doc["token"], x.jwks[kid].key, algorithms=["ES256", "RS256"],
                        audience=doc["audience"], issuer=x.fac.issuer_url)
    assert (claims["sub"], doc["grant"]) == (user, grant)
    if grant == "xcache":
        assert claims["scope"] == f"storage.read:/user/{user}"
    return claims


def login_refused(x: Ctx, login: str, message: str) -> None:
    """A real login through the provider is refused with ``message``; no user, session or token."""
    def state() -> tuple:
        return x.user_names(), x.mints(), [x.user(n)["auth_state"]["casa_tokens"] for n in ("alice", "bob", "kate")]

    before = state()
    s, r = x.login(login)
    assert r.status_code == 403 and r.url.startswith(x.fac.hub_url), (r.status_code, r.url)
    assert message in unescape(r.text), r.text[:1000]
    assert requests.get(f"{x.fac.hub_url}/hub/api/user", cookies=s.cookies, timeout=10).status_code == 403
    assert state() == before, "a refused login created a user, minted a token or changed alice, bob or kate"


def stays_on_hub(x: Ctx, next_url: str) -> None:
    """A login with ``next=next_url`` never redirects off the hub or its provider, nor injects a header."""
    s = requests.Session()
    form = s.get(f"{x.fac.hub_url}/hub/oauth_login", params={"next": next_url}, timeout=30)
    action = urljoin(form.url, unescape(FORM_ACTION.search(form.text).group(1)))
    r = s.post(action, data={"username": "alice", "password": x.passwords["alice"]}, allow_redirects=False,
               timeout=30)
    visited = []
    for _ in range(12):
        assert "casa_evil" not in r.headers.get("Set-Cookie", "") and "x-casa-evil" not in r.headers
        if not r.is_redirect:
            break
        url = urljoin(r.url, r.headers["Location"])
        visited.append(url)
        assert url.startswith((x.fac.hub_url + "/", x.fac.idp_url + "/")), f"redirected off the facility: {url}"
        r = s.get(url, allow_redirects=False, timeout=30)
    assert visited and visited[-1].startswith(x.fac.hub_url + "/"), visited


def no_server_started(x: Ctx, send: Callable[[], requests.Response | Answer], status: int, text: str = "") -> None:
    tokens_before = len(admin_api(x.fac.hub_url, x.admin, "/users/alice/tokens").json()["api_tokens"])
    r = send()
    code = getattr(r, "status_code", getattr(r, "status", None))
    assert code == status, (code, r.text[:300])
    assert text in unescape(r.text), r.text[:1500]
    headers = str(getattr(r, "headers", {}))
    assert "casa_evil" not in headers and "evil.example" not in headers, "an injected header was sent"
    assert x.user("alice")["servers"] == {}, "a server was started"
    assert len(admin_api(x.fac.hub_url, x.admin, "/users/alice/tokens").json()["api_tokens"]) == tokens_before


# ---- hostile credentials -------------------------------------------------------------------------------

def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def alg_none(x: Ctx) -> str:
    return f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'alice', 'name': 'alice'})}."


def auth_state(x: Ctx, name: str = "alice") -> dict:
    return x.user(name)["auth_state"]


def revoked(x: Ctx) -> str:
    made = x.api_token("alice", ["custom:casa-tokens:renew!user=alice"], model=True)
    r = admin_api(x.fac.hub_url, x.admin, f"/users/alice/tokens/{made['id']}", method="DELETE")
    assert r.status_code == 204, r.text
    return f"token {made['token']}"


def tampered(x: Ctx) -> str:
    t = x.tokens["alice"]
    return f"token {t[:-1]}{'0' if t[-1] != '0' else '1'}"


def basic(x: Ctx) -> str:
    return "Basic " + base64.b64encode(f"alice:{x.passwords['alice']}".encode()).decode()


def oversized_header_at_hub(x: Ctx) -> None:
    """Over tornado's 64 KiB header limit at the hub's own API port: the connection is closed, the
    hub keeps answering."""
    before = x.mints()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        x.broker(headers={"X-Pad": "a" * 70000}, port=x.api_port)
    assert x.mints() == before
    assert requests.get(f"{x.fac.hub_url}/hub/api", timeout=10).status_code == 200


def oversized_body(x: Ctx) -> None:
    """Over the hub's body limit (``CasaHubServer.max_body_size``, 4 MiB): the hub refuses the request
    after its headers without reading the body (400, connection closed); the proxy reads the body
    itself, finds the hub's connection closed and answers 503. Nothing minted, the hub keeps answering."""
    body = b"x" * (5 * 2**20)
    before = x.mints()
    a = x.broker(body=body)
    assert a.status in (400, 503) and not JWT.search(a.text), (a.status, a.text[:300])
    try:
        status = x.broker(body=body, port=x.api_port).status
    except (http.client.RemoteDisconnected, ConnectionError):
        status = None  # closed while the body was still being sent
    assert status in (400, None), status
    assert x.mints() == before
    assert requests.get(f"{x.fac.hub_url}/hub/api", timeout=10).status_code == 200


def malformed_escape(x: Ctx) -> None:
    """configurable-http-proxy decodes the path to route it and answers 500 (the hub's error page)
    when a %-escape is malformed; the hub never sees the request. At the hub's API URL: JSON 404."""
    before = x.mints()
    a = x.broker("xcache%")
    assert a.status in (400, 500) and not JWT.search(a.text), (a.status, a.text[:300])
    if a.status == 500:  # configurable-http-proxy 5.x
        assert "Something went wrong" in a.text and "URIError" in x.fac.log_tail("hub", 40)
    assert x.broker("xcache%", port=x.api_port).json()["message"] == "No grant named 'xcache%'."
    assert x.mints() == before


def unrelated_oversized_claim(x: Ctx) -> None:
    s, r = x.login("bigclaim")
    assert r.status_code == 200 and x.user("bigclaim") is not None, r.text[:300]
    own_token(x, x.broker(auth=f"token {x.api_token('bigclaim', ['custom:casa-tokens:renew!user=bigclaim'])}"),
              "bigclaim")


def lookalike_groups(x: Ctx) -> None:
    s, r = x.login("groupy")
    assert r.status_code == 200, r.text[:300]
    model = x.user("groupy")
    assert model["admin"] is False and "facility-admins" not in model["groups"], model["groups"]
    credential = f"token {x.api_token('groupy', ['custom:casa-tokens:renew!user=groupy'])}"
    refused(x, lambda: x.broker("operations", auth=credential), 403, "may not receive 'operations'")
    own_token(x, x.broker(auth=credential), "groupy")


def renew_without_then_with_xsrf(x: Ctx) -> None:
    refused(x, lambda: x.broker(auth=None, query="include_token=0", headers={"Cookie": cookie(x)}), 403,
            "'_xsrf' argument missing")
    a = x.broker(auth=None, query="include_token=0", headers={"Cookie": cookie(x), "X-XSRFToken": x.xsrf("alice")})
    assert a.status == 200 and "token" not in a.json() and not JWT.search(a.text), a.text[:300]


def no_header_injected(x: Ctx) -> None:
    a = refused(x, lambda: x.broker("xcache%0d%0aSet-Cookie:%20casa_evil=1"), 404, "No grant named")
    assert "set-cookie" not in a.headers and "casa_evil" not in json.dumps(a.headers)


def start_server(x: Ctx, options: bytes) -> Answer:
    return x.raw("POST", "/hub/api/users/alice/server", {"Authorization": f"token {x.tokens['alice-servers']}"},
                 options)


# ---- the rows ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    input: str
    expect: str
    check: Callable[[Ctx], object]


def broker_refused(status: int, message: str = "", grant: str = "xcache", **kw) -> Callable[[Ctx], Answer]:
    def check(x: Ctx) -> Answer:
        args = {k: (v(x) if callable(v) else v) for k, v in kw.items()}
        return refused(x, lambda: x.broker(grant, **args), status, message)
    return check


USERS_ONLY = "Facility tokens are issued to users only."
ROWS: dict[str, Row] = {
    # forged and foreign credentials at the broker
    "alg-none-jwt": Row("Bearer JWT, alg none, sub alice", "403, nothing minted", broker_refused(403, USERS_ONLY, auth=alg_none)),
    "facility-token-as-credential": Row("alice's own facility token as Bearer", "403",
                                        broker_refused(403, USERS_ONLY, auth=lambda x: "Bearer " + auth_state(x)["casa_tokens"]["xcache"]["token"])),
    "idp-access-token": Row("alice's provider access token", "403",
                            broker_refused(403, USERS_ONLY, auth=lambda x: "Bearer " + auth_state(x)["access_token"])),
    "idp-id-token": Row("alice's provider ID token", "403",
                        broker_refused(403, USERS_ONLY, auth=lambda x: "Bearer " + auth_state(x)["id_token"])),
    "idp-refresh-token": Row("alice's provider refresh token", "403",
                             broker_refused(403, USERS_ONLY, auth=lambda x: "token " + auth_state(x)["refresh_token"])),
    "tampered-api-token": Row("alice's API token, last character changed", "403", broker_refused(403, USERS_ONLY, auth=tampered)),
    "revoked-api-token": Row("an API token of alice's, deleted before use", "403", broker_refused(403, USERS_ONLY, auth=revoked)),
    "admin-service-token": Row("the admin service's token", "403 (tokens are for users)",
                               broker_refused(403, USERS_ONLY, auth=lambda x: f"token {x.admin}")),
    "basic-auth-password": Row("Basic auth with alice's provider password", "403", broker_refused(403, USERS_ONLY, auth=basic)),
    "token-in-url": Row("alice's API token as ?token= (no header)", "403 (credentials in URLs are not accepted)",
                        broker_refused(403, USERS_ONLY, auth=None, query=lambda x: f"token={x.tokens['alice']}")),
    "forged-proxy-user-headers": Row("X-Forwarded-User / Remote-User: alice, no credential", "403",
                                     broker_refused(403, USERS_ONLY, auth=None, headers={
                                         "X-Forwarded-User": "alice", "Remote-User": "alice", "X-Remote-User": "alice"})),
    # oversized
    "oversized-header-via-proxy": Row("20 KiB header through the proxy", "431 from the proxy, hub not reached",
                                      lambda x: refused(x, lambda: x.broker(headers={"X-Pad": "a" * 20000}), 431)),
    "oversized-header-at-hub": Row("70 KiB header at the hub's API URL", "connection closed, hub keeps answering",
                                   oversized_header_at_hub),
    "oversized-grant-name": Row("10 KiB grant name", "404 JSON", broker_refused(404, "No grant named", grant="a" * 10240)),
    "oversized-body": Row("5 MiB request body with alice's credential",
                          "refused unread: 400 or closed at the hub, 503 from the proxy; nothing minted",
                          oversized_body),
    "oversized-username-claim": Row("preferred_username of 4096 characters (real login)", "403, no user",
                                    lambda x: login_refused(x, "longname", "your username cannot be used")),
    "oversized-unrelated-claim": Row("64 KiB name claim (real login)", "signed in as bigclaim with tokens for /user/bigclaim",
                                     unrelated_oversized_claim),
    # path traversal and odd grant names
    "grant-dotdot-jwks": Row("grant ..%2F..%2Fjwks.json", "404 JSON", broker_refused(404, "No grant named '../../jwks.json'", grant="..%2F..%2Fjwks.json")),
    "grant-dotdot-operations": Row("grant htcondor%2F..%2Foperations", "404, no operations token",
                                   broker_refused(404, "No grant named", grant="htcondor%2F..%2Foperations")),
    "raw-dotdot-users-bob": Row("raw path /hub/api/casa/tokens/../users/bob", "404 JSON, nothing of bob's",
                                broker_refused(404, grant="../users/bob")),
    "encoded-dotdot-users-bob": Row("path /hub/api/casa/tokens/%2e%2e/users/bob", "404 JSON", broker_refused(404, grant="%2e%2e/users/bob")),
    "grant-case": Row("grant XCACHE", "404 (names are exact)", broker_refused(404, "No grant named 'XCACHE'", grant="XCACHE")),
    "grant-nul": Row("grant xcache%00", "404", broker_refused(404, "No grant named", grant="xcache%00")),
    "grant-malformed-escape": Row("grant xcache% (malformed %-escape)", "proxy: 500 page, hub not reached; hub URL: 404 JSON",
                                  malformed_escape),
    "username-dotdot": Row("preferred_username ../bob (real login)", "403, bob untouched",
                           lambda x: login_refused(x, "dots", "your username cannot be used")),
    # look-alike usernames and groups through real logins
    "cyrillic-a-alice": Row("preferred_username with Cyrillic a: \u0430lice", "403, no user, alice untouched",
                            lambda x: login_refused(x, "cyrillic", "your username cannot be used")),
    "fullwidth-alice": Row("preferred_username fullwidth \uff41\uff4c\uff49\uff43\uff45", "403",
                           lambda x: login_refused(x, "fullwidth", "your username cannot be used")),
    "zero-width-joiner": Row("preferred_username al<ZWJ>ice", "403", lambda x: login_refused(x, "zwj", "your username cannot be used")),
    "rtl-override": Row("preferred_username <RLO>ecila", "403", lambda x: login_refused(x, "rtl", "your username cannot be used")),
    "kelvin-sign-kate": Row("preferred_username \u212aate (KELVIN SIGN lower-cases to k)", "403, not kate's account",
                            lambda x: login_refused(x, "kelvin", "your username cannot be used")),
    "lookalike-admin-groups": Row("groups facility-admins<ZWSP>, Facility-Admins, /facility-admins/../x",
                                  "a physicist: not admin, operations 403, xcache 200", lookalike_groups),
    # CSRF with alice's browser session
    "csrf-broker-no-xsrf": Row("POST broker with the session cookie, no XSRF token", "403",
                               broker_refused(403, "'_xsrf' argument missing", auth=None, headers=lambda x: {"Cookie": cookie(x)})),
    "csrf-broker-foreign-xsrf": Row("POST broker with the session cookie and bob's XSRF token", "403",
                                    broker_refused(403, "XSRF cookie does not match", auth=None,
                                                   headers=lambda x: {"Cookie": cookie(x), "X-XSRFToken": x.xsrf("bob")})),
    "csrf-broker-cross-site-navigation": Row("cookie + Sec-Fetch-Mode: navigate, Sec-Fetch-Site: cross-site", "403",
                                             broker_refused(403, "'_xsrf' argument missing", auth=None, headers=lambda x: {
                                                 "Cookie": cookie(x), "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "cross-site"})),
    "csrf-my-facility-renew": Row("My facility's renew (include_token=0) without XSRF; then with it",
                                  "403; with it 200 and no token value", renew_without_then_with_xsrf),
    "csrf-spawn-form": Row("POST /hub/spawn without _xsrf", "403, no server",
                           lambda x: no_server_started(x, lambda: x.sessions["alice"].post(
                               f"{x.fac.hub_url}/hub/spawn", data={"profile": "standard"}, timeout=30), 403)),
    "csrf-start-server-api": Row("POST /hub/api/users/alice/server with the cookie, no XSRF", "403, no server",
                                 lambda x: no_server_started(x, lambda: x.raw("POST", "/hub/api/users/alice/server",
                                                                              {"Cookie": cookie(x)}), 403, "'_xsrf' argument missing")),
    "csrf-create-api-token": Row("POST /hub/api/users/alice/tokens with the cookie, no XSRF", "403, no API token",
                                 lambda x: no_server_started(x, lambda: x.raw("POST", "/hub/api/users/alice/tokens",
                                                                              {"Cookie": cookie(x)}, b"{}"), 403, "'_xsrf' argument missing")),
    # another user's grant or data
    "query-user-bob": Row("?user=bob&sub=bob", "200, alice's own token", lambda x: own_token(x, x.broker(query="user=bob&sub=bob"))),
    "body-user-bob": Row('JSON body {"user": "bob", "grant": "operations"}', "200, alice's own xcache token",
                         lambda x: own_token(x, x.broker(body=b'{"user": "bob", "grant": "operations"}',
                                                         headers={"Content-Type": "application/json"}))),
    "other-groups-grant": Row("alice asks for operations (facility-admins only)", "403", broker_refused(403, "may not receive 'operations'", grant="operations")),
    "facility-summary-of-bob": Row("GET /hub/api/casa/facility/bob as alice", "403, nothing of bob's",
                                   lambda x: not_bobs(x.raw("GET", "/hub/api/casa/facility/bob", {"Authorization": f"token {x.tokens['alice']}"}), 403)),
    "bob-user-model": Row("GET /hub/api/users/bob with alice's broker token", "403/404, no auth_state",
                          lambda x: not_bobs(x.raw("GET", "/hub/api/users/bob", {"Authorization": f"token {x.tokens['alice']}"}), 403, 404)),
    "bob-api-token": Row("POST /hub/api/users/bob/tokens with alice's broker token", "403/404, no token",
                         lambda x: not_bobs(x.raw("POST", "/hub/api/users/bob/tokens", {"Authorization": f"token {x.tokens['alice']}"}, b"{}"), 403, 404)),
    # open redirects and reflection at login
    "next-absolute-url": Row("login next=https://evil.example/steal", "stays on the hub", lambda x: stays_on_hub(x, "https://evil.example/steal")),
    "next-protocol-relative": Row("login next=//evil.example/x", "stays on the hub", lambda x: stays_on_hub(x, "//evil.example/x")),
    "next-backslash": Row("login next=/\\evil.example", "stays on the hub", lambda x: stays_on_hub(x, "/\\evil.example")),
    "next-javascript": Row("login next=javascript:alert(1)", "stays on the hub", lambda x: stays_on_hub(x, "javascript:alert(1)")),
    "next-crlf": Row("login next=/hub/home\\r\\nX-Casa-Evil: 1", "no header injected, stays on the hub",
                     lambda x: stays_on_hub(x, "/hub/home\r\nX-Casa-Evil: 1\r\nSet-Cookie: casa_evil=1")),
    "login-page-next-markup": Row('GET /hub/login?next="><script>alert(1)</script>', "200, not reflected as markup",
                                  lambda x: not_reflected(requests.get(f"{x.fac.hub_url}/hub/login", timeout=30,
                                                                       params={"next": '"><script>alert(1)</script>'}))),
    # header injection and markup in profile and grant names
    "profile-crlf-form": Row("spawn form profile 'standard\\r\\nSet-Cookie: casa_evil=1'", "400, no header, no server",
                             lambda x: no_server_started(x, lambda: x.sessions["alice"].post(
                                 f"{x.fac.hub_url}/hub/spawn", timeout=30, allow_redirects=False,
                                 data={"profile": "standard\r\nSet-Cookie: casa_evil=1", "_xsrf": x.xsrf("alice")}), 400, "There is no server profile")),
    "profile-markup-form": Row("spawn form profile <script>alert(1)</script>", "400, escaped",
                               lambda x: not_reflected(x.sessions["alice"].post(
                                   f"{x.fac.hub_url}/hub/spawn", timeout=30, allow_redirects=False,
                                   data={"profile": "<script>alert(1)</script>", "_xsrf": x.xsrf("alice")}), 400)),
    "profile-crlf-api": Row("API user_options profile 'x\\r\\nLocation: http://evil.example/'", "400 JSON, no Location header",
                            lambda x: no_server_started(x, lambda: start_server(x, json.dumps(
                                {"profile": "x\r\nLocation: http://evil.example/"}).encode()), 400, "There is no server profile")),
    "profile-as-list-api": Row('API user_options {"profile": ["admin-gpu"]}', "403 not available to your groups",
                               lambda x: no_server_started(x, lambda: start_server(x, b'{"profile": ["admin-gpu"]}'), 403,
                                                           "not available to your groups")),
    "grant-crlf": Row("grant xcache%0d%0aSet-Cookie:%20casa_evil=1", "404 JSON, no header", no_header_injected),
    "grant-markup": Row("grant %3Cscript%3E", "404 as application/json", broker_refused(404, "No grant named '<script>'", grant="%3Cscript%3E")),
}


def cookie(x: Ctx) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in x.sessions["alice"].cookies if c.name.startswith(("jupyterhub-", "_xsrf")))


def not_bobs(a: Answer, *statuses: int) -> None:
    assert a.status in statuses, (a.status, a.text[:300])
    assert "auth_state" not in a.text and "grants" not in a.text and not JWT.search(a.text)
    assert not re.search(r"\b[0-9a-f]{32}\b", a.text), "something token-like in the answer"


def not_reflected(r: requests.Response, status: int = 200) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "<script>alert(1)</script>" not in r.text and '"><script>' not in r.text


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_hostile_input(x, row):
    """One row of the table: send the hostile input, assert the outcome in ``ROWS[row].expect``."""
    ROWS[row].check(x)


def test_the_table_has_at_least_30_rows():
    assert len(ROWS) >= 30, len(ROWS)


def markdown_table() -> str:
    """The table for the README (``python -c 'import test_hostile_inputs as t; print(t.markdown_table())'``)."""
    lines = ["| row | hostile input | outcome asserted |", "|---|---|---|"]
    lines += [f"| `{k}` | {r.input} | {r.expect} |".replace("\r", "\\r").replace("\n", "\\n") for k, r in ROWS.items()]
    return "\n".join(lines)


def test_rows_name_their_input_and_outcome():
    assert all(r.input and r.expect for r in ROWS.values())
    written = re.findall(r'^    "([a-z0-9-]+)": Row\(', Path(__file__).read_text(), re.M)
    assert sorted(written) == sorted(ROWS), "a row id is used twice (the later row replaced the earlier)"
