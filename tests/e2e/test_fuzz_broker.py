"""Fuzzing the token broker's request handling in a real hub (provider, hub, proxy, issuer).

Requests to ``/hub/api/casa/tokens/<grant>`` with any grant path segment (percent-encoded, or with
raw ``/`` and ``%``), query string, body, extra headers, method and credential (alice's or bob's
broker token, alice's browser session with or without her XSRF token, the admin service's token,
none, garbage), through the proxy or at the hub's own API URL. Every answer must be either

- a JSON error (4xx, ``{"status", "message"}``) without any token or the credential in it, or
- 200 for a POST by a user credential (a session only with its XSRF token) for one of *that
  user's* grants, with ``Cache-Control: no-store`` and a token (unless the caller passed
  ``include_token``) that verifies against the published JWKS with ``sub`` = that user and the
  grant's audience and scope.

Never 5xx, never a redirect, never a token for another user. The hub of this module has no broker
rate limit to speak of (the site file's ``tokens.broker_rate_per_minute``), so the examples reach the grant handling instead
of the limiter (the limit is tested in test_e2e_broker.py), and the session's hub keeps its limits
for the other tests. It is ``shared_pages_facility`` (tests/support/shared_facilities.py), whose key
test_e2e_key_rotation.py rotates: tokens verify with the keys published when this module starts.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_to_bytes, urlencode, urlparse

import jwt
import pytest
import requests
from helpers import admin_api, http_login
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from casa_hub.demo.facility import DemoFacility

pytestmark = pytest.mark.e2e

SCALE = int(os.environ.get("CASA_FUZZ_SCALE", "1"))
# CI: the same examples on every run (derandomized, no example database). CASA_FUZZ_SCALE=N runs N
# times as many; CASA_FUZZ_RANDOM=1 draws new ones (a failure prints the example to paste in @example).
FUZZ = settings(deadline=None, derandomize=os.environ.get("CASA_FUZZ_RANDOM") != "1", database=None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow])
RENEW = "custom:casa-tokens:renew"
JWT = re.compile(r"e[w-z][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
GRANTS = {  # the demo's grants: name -> (audience, scope template), and who may have them
    "xcache": ("casa-demo-xcache", "storage.read:/user/{username}"),
    "htcondor": ("casa-demo-htcondor", "compute.read compute.create compute.modify compute.cancel"),
    "operations": ("casa-demo-xcache", "storage.read:/"),
}
ALLOWED = {"alice": {"xcache", "htcondor"}, "bob": {"xcache", "htcondor", "operations"}}
OWNER = {"alice": "alice", "bob": "bob", "alice-session": "alice", "alice-session+xsrf": "alice"}


class Site:
    """The facility and the credentials the examples use (a plain class: a failing example prints
    its arguments, and this repr never shows a credential)."""

    def __init__(self, fac: DemoFacility, api_port: int, secrets: dict[str, str],
                 headers: dict[str, dict[str, str]], jwks: dict[str, jwt.PyJWK]) -> None:
        self.fac, self.api_port, self.jwks = fac, api_port, jwks
        self.secrets = secrets    # credential name -> the secret value it sends
        self.headers = headers    # credential name -> headers carrying it

    def __repr__(self) -> str:
        return f"Site({self.fac.hub_url})"


@pytest.fixture(scope="module")
def site(shared_pages_facility, admin_token) -> Site:
    fac = shared_pages_facility
    tokens, session = {}, None
    for name in ("alice", "bob"):
        s, r = http_login(fac.hub_url, name, fac.password(name))
        assert r.status_code == 200, r.text[:300]
        session = s if name == "alice" else session
        r = admin_api(fac.hub_url, admin_token, f"/users/{name}/tokens", method="POST",
                      json={"scopes": [f"{RENEW}!user={name}"], "note": "broker fuzzing"})
        assert r.status_code == 201, r.text
        tokens[name] = r.json()["token"]
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies
                        if c.name.startswith(("jupyterhub-", "_xsrf")))
    xsrf = session.cookies.get("_xsrf")
    secrets = {"alice": tokens["alice"], "bob": tokens["bob"], "admin": admin_token, "garbage": "x" * 40,
               "alice-session": cookies, "alice-session+xsrf": cookies}
    headers = {
        "alice": {"Authorization": f"token {tokens['alice']}"},
        "bob": {"Authorization": f"Bearer {tokens['bob']}"},
        "admin": {"Authorization": f"token {admin_token}"},
        "garbage": {"Authorization": "token " + "x" * 40},
        "none": {},
        "alice-session": {"Cookie": cookies},
        "alice-session+xsrf": {"Cookie": cookies, "X-XSRFToken": xsrf},
    }
    settings_doc = json.loads((fac.state_dir / "settings.json").read_text())
    jwks = requests.get(f"{fac.issuer_url}/jwks.json", timeout=10).json()
    return Site(fac, settings_doc["hub_api_port"], secrets, headers,
                {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]})


# ---- requests ---------------------------------------------------------------------------------------

@dataclass
class Case:
    credential: str
    method: str
    segment: str          # as sent in the path
    query: str
    body: bytes
    headers: dict[str, str]
    via: str              # "proxy" or "hub"
    host: str = ""        # the Host header; "" for the address connected to


def send(site: Site, case: Case) -> tuple[int, dict[str, str], bytes]:
    """The request exactly as built (no client-side normalisation of the path)."""
    port = urlparse(site.fac.hub_url).port if case.via == "proxy" else site.api_port
    path = f"/hub/api/casa/tokens/{case.segment}" + (f"?{case.query}" if case.query else "")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(case.method, path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": case.host or f"127.0.0.1:{port}", **case.headers, **site.headers[case.credential]}
        for name, value in headers.items():
            conn.putheader(name, value.encode("latin-1"))
        conn.putheader("Content-Length", str(len(case.body)))
        conn.endheaders(case.body)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def malformed_escape(path: str) -> bool:
    """Whether JavaScript's decodeURIComponent (the proxy's router) throws on ``path``."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        return True
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def check_answer(site: Site, case: Case, status: int, headers: dict[str, str], body: bytes) -> None:
    """The rules of the module docstring for one request and its answer."""
    label = f"{case.method} {case.segment!r}?{case.query} as {case.credential} via {case.via}: {status}"
    text = body.decode("utf-8", "replace")
    secret = site.secrets.get(case.credential)
    assert not secret or secret not in text, f"{label}: the credential is echoed"
    assert not JWT.search(text) or status == 200, f"{label}: a JWT in an error"
    if status == 500 and case.via == "proxy" and malformed_escape(case.segment):
        # configurable-http-proxy decodes the path to route it and answers 500 (the hub's error
        # page) when that fails; the hub never sees the request (see test_hostile_inputs.py)
        return
    assert status == 200 or 400 <= status < 500, f"{label} {text[:300]}"
    if status != 200:
        assert headers.get("content-type", "").startswith("application/json"), f"{label}: not JSON"
        doc = json.loads(body)
        assert doc.get("status") == status and "message" in doc, f"{label}: {text[:300]}"
        return
    user = OWNER.get(case.credential)
    grant = unquote(case.segment)
    assert case.method == "POST" and user is not None, f"{label}: 200 for a {case.credential} credential"
    assert grant in ALLOWED[user], f"{label}: {user} received the grant {grant!r}"
    assert headers.get("cache-control") == "no-store", label
    doc = json.loads(body)
    audience, template = GRANTS[grant]
    assert (doc["grant"], doc["audience"], doc["scope"]) == (grant, audience, template.format(username=user))
    tokens = JWT.findall(text)
    if b"include_token" not in case.query.encode() + case.body:
        assert "token" in doc, f"{label}: no token in the answer"
    if "token" in doc:
        only_its_token = tokens == [doc["token"]]  # compared apart: a failure never prints a token
        assert only_its_token, f"{label}: other JWTs in the answer"
        kid = jwt.get_unverified_header(doc["token"])["kid"]
        claims = jwt.decode(doc["token"], site.jwks[kid].key, algorithms=["ES256", "RS256"], audience=audience,
                            issuer=site.fac.issuer_url)
        assert (claims["sub"], claims["scope"], claims["jti"]) == (user, doc["scope"], doc["jti"]), label
    else:
        assert not tokens, f"{label}: a JWT outside the token field"


# ---- strategies -------------------------------------------------------------------------------------

PIECES = ["xcache", "htcondor", "operations", "..", ".", "/", "%", "%2e", "%2F", "\x00", "\r\n", "<script>", " ",
          "?", "#", ";", "&", "=", "\u00e9", "\u212a", "XCACHE", "~", "\\", "users", "bob"]
real_grants = st.sampled_from(["xcache", "htcondor", "operations"])
segments = st.one_of(
    real_grants, real_grants, real_grants,
    st.text(min_size=1, max_size=24),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
).flatmap(lambda raw: st.sampled_from([quote(raw, safe=""), quote(raw, safe=""), quote(raw, safe="/%")]))
header_value = st.one_of(
    st.sampled_from(["bob", "alice", "127.0.0.1", "https://evil.example", "null", "navigate", "cross-site",
                     "same-origin", "application/json", "application/x-www-form-urlencoded", "text/plain"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
header_name = st.sampled_from([
    "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "Forwarded", "Origin", "Referer",
    "Sec-Fetch-Mode", "Sec-Fetch-Site", "Content-Type", "X-XSRFToken", "Accept", "X-Forwarded-User",
    "X-Remote-User", "Remote-User", "X-Auth-Request-User", "User-Agent",
]) | st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)
arguments = st.lists(st.tuples(
    st.sampled_from(["user", "include_token", "grant", "_xsrf", "token", "sub", "username", "next"]) | st.text(max_size=6),
    st.sampled_from(["bob", "0", "1", " 0 ", "operations", "alice", "../bob"]) | st.text(max_size=12),
), max_size=4)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    arguments.map(lambda pairs: urlencode(pairs).encode()),
    st.dictionaries(st.sampled_from(["user", "grant", "sub", "scope", "include_token"]),
                    st.text(max_size=10), max_size=3).map(lambda d: json.dumps(d).encode()),
)
cases = st.builds(
    Case,
    credential=st.sampled_from(["alice", "bob", "alice-session", "alice-session+xsrf", "admin", "none", "garbage"]),
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH"]),
    segment=segments,
    query=arguments.map(urlencode),
    body=bodies,
    headers=st.dictionaries(header_name, header_value, max_size=4),
    via=st.sampled_from(["proxy", "hub"]),
    host=st.sampled_from(["", "", "evil.example", "localhost", "127.0.0.1:1", "hub.example.org:443"]),
)


@settings(FUZZ, max_examples=150 * SCALE)
@given(case=cases)
@example(case=Case("alice", "POST", "xcache", "user=bob", b"", {}, "proxy"))
@example(case=Case("alice", "POST", "operations", "", b"", {}, "hub"))
@example(case=Case("alice", "POST", "..%2Fusers%2Fbob", "", b"", {}, "proxy"))
@example(case=Case("alice", "POST", "../users/bob", "", b"", {}, "proxy"))
@example(case=Case("alice-session", "POST", "xcache", "", b"", {"Sec-Fetch-Mode": "navigate"}, "proxy"))
@example(case=Case("alice-session+xsrf", "POST", "xcache", "include_token=0", b"", {}, "proxy"))
@example(case=Case("none", "POST", "xcache", "", b"", {"X-Forwarded-User": "alice", "Remote-User": "alice"}, "hub"))
@example(case=Case("bob", "POST", "operations", "", b'{"user": "alice"}', {"Content-Type": "application/json"},
                   "proxy"))
def test_broker_answers_json_errors_or_the_callers_own_tokens(site, case):
    status, headers, body = send(site, case)
    event(f"{status} for {case.credential}")  # --hypothesis-show-statistics: what the examples reached
    check_answer(site, case, status, headers, body)


def test_the_rules_can_fail(site):
    """The checker refuses a 200 that hands alice's credential bob's grant or a token of another user."""
    case = Case("alice", "POST", "operations", "", b"", {}, "proxy")
    with pytest.raises(AssertionError, match="alice received the grant 'operations'"):
        check_answer(site, case, 200, {"cache-control": "no-store"}, b"{}")
    with pytest.raises(AssertionError, match="200 for a admin credential"):
        check_answer(site, Case("admin", "POST", "xcache", "", b"", {}, "hub"), 200, {}, b"{}")
    with pytest.raises(AssertionError, match="not JSON"):
        check_answer(site, case, 404, {"content-type": "text/html"}, b"<p>no</p>")
