"""Bad tokens against the real hub's published keys, and path traversal in grants and usernames.

Tokens are forged here in every way a service must refuse, most of them signed with the hub's own
issuer key (read from the demo state) so that exactly one thing is wrong with each. The same tokens
are then presented to the hub's token broker as a credential, which must refuse them without
returning any token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from helpers import admin_api, http_login

from casa_hub.tokens import CasaTokenIssuer, GrantConfigError, UnsafeUsername, check_username
from casa_hub.tokens.grants import parse_grant
from casa_hub.tokens.verifier import MAX_TOKEN_BYTES, FacilityTokenVerifier, TokenRejected

AUD = "casa-demo-xcache"


# ---- building tokens --------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_jwt(header: dict, payload: dict, sign=None) -> str:
    """A JWT assembled by hand, so that headers and signatures pyjwt refuses to make can be made."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()) if sign else b'')}"


def replace_payload(token: str, payload: dict) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(payload).encode())}.{signature}"


class Forge:
    """Makes tokens for the real facility: its issuer URL, its published kid, its private key."""

    def __init__(self, issuer_url: str, kid: str, alg: str, key, public_pem: bytes, jwks_text: str):
        self.issuer_url, self.kid, self.alg, self.key = issuer_url, kid, alg, key
        self.public_pem, self.jwks_text = public_pem, jwks_text

    def claims(self, **over) -> dict:
        now = int(time.time())
        base = {"iss": self.issuer_url, "sub": "alice", "aud": AUD, "iat": now - 1, "nbf": now - 1,
                "exp": now + 600, "jti": str(uuid.uuid4()), "wlcg.ver": "1.0",
                "scope": "storage.read:/user/alice"}
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def sign(self, claims: dict | None = None, headers: dict | None = None, key=None, alg: str | None = None) -> str:
        headers = {"kid": self.kid, "typ": "JWT"} if headers is None else headers
        return jwt.encode(self.claims() if claims is None else claims, key or self.key,
                          algorithm=alg or self.alg, headers=headers)


def foreign_ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def forge(facility) -> Forge:
    """The hub's signing key, found by matching the PEM files in its state to the published JWKS."""
    jwks_text = requests.get(f"{facility.issuer_url}/jwks.json", timeout=10).text
    published = {k["kid"]: jwt.PyJWK(k) for k in json.loads(jwks_text)["keys"]}
    for pem in sorted(Path(facility.state_dir, "issuer-keys").rglob("*.pem")):
        private = load_pem_private_key(pem.read_bytes(), password=None)
        for kid, jwk in published.items():
            if jwk.key.public_numbers() == private.public_key().public_numbers():
                public_pem = private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                return Forge(facility.issuer_url, kid, jwk.algorithm_name, private, public_pem, jwks_text)
    raise AssertionError("none of the hub's issuer keys in the demo state is in its published JWKS")


@pytest.fixture(scope="module")
def verifier(facility) -> FacilityTokenVerifier:
    return FacilityTokenVerifier(facility.issuer_url, AUD)


@pytest.fixture(scope="module")
def alice_credential(facility, admin_token) -> str:
    """An API token of alice with the scopes of a server's JUPYTERHUB_API_TOKEN."""
    _, r = http_login(facility.hub_url, "alice", facility.password("alice"))
    assert r.status_code == 200, r.text[:300]
    r = admin_api(facility.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["users:activity!user=alice", "custom:casa-tokens:renew!user=alice"],
                        "note": "bad-token tests"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def broker_post(url: str, authorization: str | None, grant: str = "xcache") -> requests.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return requests.post(f"{url}/casa/tokens/{grant}", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def broker_token(facility, alice_credential) -> dict:
    r = broker_post(f"{facility.hub_url}/hub/api", f"token {alice_credential}")
    assert r.status_code == 200, r.text
    return r.json()


# ---- the matrix -------------------------------------------------------------------------------------

def signed_raw(f: Forge, payload_segment: str) -> str:
    """A token whose payload segment is given as is, signed with the hub's key."""
    signing_input = f"{b64(json.dumps({'alg': f.alg, 'kid': f.kid}).encode())}.{payload_segment}"
    return f"{signing_input}.{b64(jwt.get_algorithm_by_name(f.alg).sign(signing_input.encode(), f.key))}"


def _hs256(secret_of):
    return lambda f: raw_jwt({"alg": "HS256", "typ": "JWT", "kid": f.kid}, f.claims(),
                             lambda m: hmac.new(secret_of(f), m, hashlib.sha256).digest())


BAD_TOKENS = {
    # header and algorithm
    "alg none": (lambda f: raw_jwt({"alg": "none", "typ": "JWT", "kid": f.kid}, f.claims()), "disallowed_alg"),
    "alg none, signature kept": (lambda f: "{}.{}.{}".format(
        b64(json.dumps({"alg": "none", "kid": f.kid}).encode()), *f.sign().split(".")[1:]), "disallowed_alg"),
    "HS256 keyed with the public key PEM": (_hs256(lambda f: f.public_pem), "disallowed_alg"),
    "HS256 keyed with the published JWKS": (_hs256(lambda f: f.jwks_text.encode()), "disallowed_alg"),
    "RS256 header on the ES256 key's kid": (lambda f: f.sign(key=rsa.generate_private_key(65537, 2048), alg="RS256"),
                                            "disallowed_alg"),
    "missing kid": (lambda f: f.sign(headers={"typ": "JWT"}), "missing_kid"),
    "unknown kid": (lambda f: f.sign(headers={"kid": "not-published"}, key=foreign_ec_key()), "unknown_kid"),
    "unknown kid, real key": (lambda f: f.sign(headers={"kid": "not-published", "typ": "JWT"}), "unknown_kid"),
    'crit: ["exp"]': (lambda f: f.sign(headers={"kid": f.kid, "typ": "JWT", "crit": ["exp"]}), "unsupported_crit"),
    # signature
    "foreign key, real kid": (lambda f: f.sign(key=foreign_ec_key()), "bad_signature"),
    "sub changed after signing": (lambda f: replace_payload(f.sign(), f.claims(sub="bob")), "bad_signature"),
    "scope widened after signing": (lambda f: replace_payload(f.sign(), f.claims(scope="storage.read:/")),
                                    "bad_signature"),
    "signature stripped": (lambda f: f.sign().rsplit(".", 1)[0] + ".", "bad_signature"),
    # time
    "expired": (lambda f: f.sign(f.claims(iat=int(time.time()) - 1300, nbf=int(time.time()) - 1300,
                                         exp=int(time.time()) - 100)), "expired"),
    "nbf in the future": (lambda f: f.sign(f.claims(nbf=int(time.time()) + 600)), "not_yet_valid"),
    "iat in the future": (lambda f: f.sign(f.claims(iat=int(time.time()) + 600)), "not_yet_valid"),
    "7 h lifetime": (lambda f: f.sign(f.claims(exp=int(time.time()) - 1 + 7 * 3600)), "lifetime_too_long"),
    "exp = 2**53": (lambda f: f.sign(f.claims(exp=2**53)), "lifetime_too_long"),
    "exp as a string": (lambda f: f.sign(f.claims(exp=str(int(time.time()) + 600))), "invalid_time_claim"),
    "exp as a float": (lambda f: f.sign(f.claims(exp=float(int(time.time()) + 600))), "invalid_time_claim"),
    "iat as a float": (lambda f: f.sign(f.claims(iat=float(int(time.time()) - 1))), "invalid_time_claim"),
    "nbf as a string": (lambda f: f.sign(f.claims(nbf=str(int(time.time()) - 1))), "invalid_time_claim"),
    "no nbf": (lambda f: f.sign(f.claims(nbf=None)), "missing_claim"),
    # claims
    "wrong issuer": (lambda f: f.sign(f.claims(iss="http://127.0.0.1:1/hub/casa-issuer")), "wrong_issuer"),
    "wrong audience": (lambda f: f.sign(f.claims(aud="casa-demo-htcondor")), "wrong_audience"),
    "no exp": (lambda f: f.sign(f.claims(exp=None)), "missing_claim"),
    "no scope": (lambda f: f.sign(f.claims(scope=None)), "missing_claim"),
    "scope with ..": (lambda f: f.sign(f.claims(scope="storage.read:/user/alice/../bob")), "invalid_scope"),
    "scope with %2e%2e": (lambda f: f.sign(f.claims(scope="storage.read:/user/alice/%2e%2e/bob")), "invalid_scope"),
    "scope with a relative path": (lambda f: f.sign(f.claims(scope="storage.read:user/alice")), "invalid_scope"),
    "unknown wlcg.ver": (lambda f: f.sign(f.claims(**{"wlcg.ver": "9.9"})), "invalid_claims"),
    "unexpected claim": (lambda f: f.sign(f.claims(admin=True)), "invalid_claims"),
    # size and shape
    "oversized (signed, > 16 KiB)": (lambda f: f.sign(f.claims(pad="x" * MAX_TOKEN_BYTES)), "too_large"),
    "oversized garbage": (lambda f: "A" * (MAX_TOKEN_BYTES + 1), "too_large"),
    "empty": (lambda f: "", "malformed"),
    "not a JWT": (lambda f: "not-a-jwt", "malformed"),
    "two parts": (lambda f: ".".join(f.sign().split(".")[:2]), "malformed"),
    "four parts": (lambda f: f.sign() + ".AAAA", "malformed"),
    "header not JSON": (lambda f: f"{b64(b'not json')}.{b64(b'{}')}.AAAA", "malformed"),
    "payload not JSON, validly signed": (lambda f: signed_raw(f, b64(b"[1, 2")), "malformed"),
    "payload a JSON list, validly signed": (lambda f: signed_raw(f, b64(b"[1, 2]")), "malformed"),
    "non-ASCII bytes": (lambda f: "é.é.é".encode(), "malformed"),
}


@pytest.mark.e2e
def test_forge_makes_genuine_tokens(forge, verifier):
    """The forging fixture signs with the hub's real key: its unmodified token is accepted."""
    claims = verifier.verify(forge.sign())
    assert claims["sub"] == "alice" and claims["iss"] == forge.issuer_url


@pytest.mark.e2e
def test_a_token_of_exactly_6_hours_verifies(forge, verifier):
    now = int(time.time())
    claims = verifier.verify(forge.sign(forge.claims(iat=now, nbf=now, exp=now + 6 * 3600)))
    assert claims["exp"] - claims["iat"] == 21600


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_verifier_refuses_bad_token(forge, verifier, caplog, case):
    make, reason = BAD_TOKENS[case]
    token = make(forge)
    with pytest.raises(TokenRejected) as e:
        verifier.verify(token)
    assert e.value.reason == reason, f"{case}: refused as {e.value.reason} ({e.value}), expected {reason}"
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    for part in (p for p in text.split(".") if len(p) > 8):
        assert part not in str(e.value) and part not in caplog.text, "a token part leaked into an error or log"


@pytest.mark.e2e
def test_oversized_token_is_refused_before_parsing_or_fetching_keys(facility, forge):
    fresh = FacilityTokenVerifier(facility.issuer_url, AUD)
    for token in (forge.sign(forge.claims(pad="x" * MAX_TOKEN_BYTES)), "A" * (MAX_TOKEN_BYTES + 1)):
        with pytest.raises(TokenRejected, match="longer than 16384 bytes") as e:
            fresh.verify(token)
        assert e.value.reason == "too_large"
    assert fresh.fetch_count == 0, "an oversized token made the verifier fetch the issuer's keys"


@pytest.mark.e2e
def test_broker_token_verifies_with_scope_decisions(facility, broker_token):
    v = FacilityTokenVerifier(facility.issuer_url, AUD)
    token = broker_token["token"]
    claims = v.verify(token)
    assert claims["sub"] == "alice" and claims["aud"] == AUD and claims["jti"] == broker_token["jti"]
    assert claims["scope"] == "storage.read:/user/alice" and claims["wlcg.ver"] == "1.0"
    assert v.fetch_count == 1, "keys fetched once through discovery"
    v.verify(token)
    assert v.fetch_count == 1, "keys cached"
    assert v.test(token, "read", "/user/alice")
    assert v.test(token, "read", "/user/alice/data/events.root")
    assert v.test(token, "storage.read", "/user/alice")
    assert not v.test(token, "read", "/user/bob"), "another user's path"
    assert not v.test(token, "read", "/user/alicex"), "a sibling sharing the prefix"
    assert not v.test(token, "read", "/user/alice/../bob"), "traversal in the requested path"
    assert not v.test(token, "read", "/"), "the parent directory"
    assert not v.test(token, "write", "/user/alice"), "write with a read-only token"
    assert v.authorize(token, "read", "/user/alice/x")["sub"] == "alice"
    with pytest.raises(TokenRejected) as e:
        v.authorize(token, "write", "/user/alice/x")
    assert e.value.reason == "insufficient_scope" and "write on /user/alice/x" in str(e.value)
    with pytest.raises(TokenRejected) as e:
        FacilityTokenVerifier(facility.issuer_url, "casa-demo-htcondor").verify(token)
    assert e.value.reason == "wrong_audience"


@pytest.mark.e2e
def test_unknown_kid_refetches_at_most_once_per_interval(facility, forge, broker_token):
    now = [1000.0]
    v = FacilityTokenVerifier(facility.issuer_url, AUD, min_refetch_interval=30, cache_seconds=300,
                              clock=lambda: now[0])
    unknown = BAD_TOKENS["unknown kid"][0](forge)
    v.verify(broker_token["token"])
    assert v.fetch_count == 1
    for _ in range(5):
        with pytest.raises(TokenRejected, match="not published"):
            v.verify(unknown)
    assert v.fetch_count == 1, "unknown kids within the interval do not refetch"
    now[0] += 31
    with pytest.raises(TokenRejected):
        v.verify(unknown)
    with pytest.raises(TokenRejected):
        v.verify(unknown)
    assert v.fetch_count == 2, "one refetch per interval"
    now[0] += 300
    v.verify(broker_token["token"])
    assert v.fetch_count == 3, "stale keys are fetched again"


# ---- the same tokens as the broker's credential -----------------------------------------------------

def _hub_api_url(facility) -> str:
    settings = json.loads((facility.state_dir / "settings.json").read_text())
    return f"http://127.0.0.1:{settings['hub_api_port']}/hub/api"


@pytest.mark.e2e
@pytest.mark.parametrize("case", [*BAD_TOKENS, "a genuine facility token"])
def test_broker_refuses_bad_tokens_as_credentials(facility, forge, broker_token, case):
    """Through the proxy (browsers) and at the hub's own API URL (servers' JUPYTERHUB_API_URL)."""
    if case == "a genuine facility token":
        token = broker_token["token"]
    else:
        token = BAD_TOKENS[case][0](forge)
    text = token.decode("latin-1") if isinstance(token, bytes) else token
    for where, url in (("proxy", f"{facility.hub_url}/hub/api"), ("hub", _hub_api_url(facility))):
        for scheme in ("token", "Bearer"):
            r = broker_post(url, f"{scheme} {text}".strip())
            label = f"{case}: {scheme} via {where}"
            if where == "proxy" and len(text) > MAX_TOKEN_BYTES:
                # node's HTTP server refuses request headers over 16 KiB before the hub sees them
                assert r.status_code == 431, f"{label}: {r.status_code}"
            else:
                assert r.status_code in (401, 403), f"{label}: {r.status_code} {r.text[:200]}"
            assert "eyJ" not in r.text and '"token"' not in r.text, f"{label}: a token in the answer"
    hub_log = (facility.log_dir / "hub.log").read_text(errors="replace")
    longest = max(text.split("."), key=len)
    assert len(longest) < 12 or longest not in hub_log, f"{case}: the credential was written to the hub's log"


# ---- path traversal in grants and usernames ---------------------------------------------------------

UNSAFE_USERNAMES = ["../bob", "a/b", "alice\n", "%2e%2e", "..", ".", "a..b", "alice/../bob", "..%2fbob",
                    "", "alice bob", "al\x00ice", "\u0430lice", "-alice", "alice\\bob", "~alice", "a" * 129]


@pytest.mark.parametrize("username", UNSAFE_USERNAMES)
def test_unsafe_usernames_are_refused_everywhere(tmp_path, username):
    with pytest.raises(UnsafeUsername):
        check_username(username)
    grant = parse_grant("xcache", {"audience": AUD, "scopes": ["storage.read:/user/{username}"]})
    with pytest.raises(UnsafeUsername, match="usernames may"):
        grant.render_scopes(username)
    issuer = CasaTokenIssuer(issuer_url="https://hub.test/hub/casa-issuer", key_dir=str(tmp_path),
                             generate_key_if_missing="ES256",
                             grants={"xcache": {"audience": AUD, "scopes": ["storage.read:/user/{username}"]}})
    with pytest.raises(UnsafeUsername):
        issuer.mint(username, "xcache")


@pytest.mark.parametrize("username", ["alice", "bob.smith", "u_1", "alice@cern.ch", "j+doe"])
def test_safe_usernames_render_into_their_own_path(username):
    grant = parse_grant("xcache", {"audience": AUD, "scopes": ["storage.read:/user/{username}"]})
    assert grant.render_scopes(username) == f"storage.read:/user/{username}"


@pytest.mark.parametrize("template, message", [
    ("storage.read:/user/{username}/../..", "path traversal"),
    ("storage.read:/user/{username}/..", "path traversal"),
    ("storage.read:/user/../{username}", "path traversal"),
    ("storage.read:/user/./{username}", "path traversal"),
    ("storage.read:/user/{username}/%2e%2e", "path traversal"),
    ("storage.read:/user/{username}/%2E%2e/bob", "path traversal"),
    ("storage.read:/user/%252e%252e/{username}", "path traversal"),
    ("storage.modify:/user/{username}/.%2e", "path traversal"),
    ("storage.read:user/{username}", "must be absolute"),
    ("read:{username}", "must be absolute"),
    ("storage.read:/user\\{username}", "backslash"),
    ("storage.read:/user/{username}\x07", "control character"),
    ("storage.read:/user/{username}/\n", "without spaces"),
    ("storage.read:/user/{user}", "unknown placeholder"),
])
def test_unsafe_scope_templates_are_refused_at_config(template, message):
    spec = {"audience": AUD, "scopes": [template]}
    with pytest.raises(GrantConfigError, match=message) as e:
        parse_grant("xcache", spec, "CasaTokenIssuer.grants")
    assert "CasaTokenIssuer.grants['xcache'].scopes" in str(e.value)
    with pytest.raises(GrantConfigError, match=message):
        CasaTokenIssuer(grants={"xcache": spec})


@pytest.mark.parametrize("template", ["storage.read:/user/{username}", "storage.read:/", "compute.read",
                                      "storage.create:/user/{username}/out", "storage.read:/store/a.b..c"])
def test_ordinary_scope_templates_are_accepted(template):
    assert parse_grant("xcache", {"audience": AUD, "scopes": [template]}).scopes == (template,)
