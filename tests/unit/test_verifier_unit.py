"""FacilityTokenVerifier without the hub: URL policy, key fetching and rotation, both algorithms.

Tokens come from a real CasaTokenIssuer with keys in a temporary directory; discovery and JWKS are
served by the verifier's ``fetch`` hook from that issuer's own documents.
"""

from __future__ import annotations

import time

import jwt
import pytest

from casa_hub.common.ports import free_port
from casa_hub.tokens import CasaTokenIssuer
from casa_hub.tokens.claims_policy import check_token_times_and_header
from casa_hub.tokens.verifier import REASONS, FacilityTokenVerifier, TokenRejected, url_allowed

ISS = "https://hub.test/hub/casa-issuer"
GRANTS = {
    "xcache": {"audience": "xcache.test", "scopes": ["storage.read:/user/{username}",
                                                     "storage.create:/user/{username}/out"]},
    "condor": {"audience": "condor.test", "scopes": ["compute.read", "compute.create"]},
}


def make_issuer(key_dir, alg: str = "ES256") -> CasaTokenIssuer:
    return CasaTokenIssuer(issuer_url=ISS, key_dir=str(key_dir), generate_key_if_missing=alg, grants=GRANTS)


class Documents:
    """What the issuer would serve over HTTP, with a counter of requests."""

    def __init__(self, issuer: CasaTokenIssuer, discovery_over: dict | None = None):
        self.issuer, self.discovery_over, self.requests = issuer, discovery_over or {}, []

    def __call__(self, url: str):
        self.requests.append(url)
        if url == f"{ISS}/.well-known/openid-configuration":
            return dict(self.issuer.discovery(), **self.discovery_over)
        if url == f"{ISS}/jwks.json":
            return self.issuer.jwks()
        raise OSError(f"nothing at {url}")


@pytest.mark.parametrize("url, insecure, ok", [
    ("https://hub.example.org/hub/casa-issuer", False, True),
    ("http://127.0.0.1:8000/hub/casa-issuer", False, True),
    ("http://127.5.0.1/x", False, True),
    ("http://[::1]:8000/x", False, True),
    ("http://localhost:8000/x", False, True),
    ("http://hub.example.org/hub/casa-issuer", False, False),
    ("http://10.0.0.1/x", False, False),
    ("http://hub.example.org/hub/casa-issuer", True, True),
    ("ftp://hub.example.org/x", True, False),
    ("https:///no-host", False, False),
])
def test_url_policy(url, insecure, ok):
    assert url_allowed(url, insecure) is ok


def test_plain_http_issuer_needs_explicit_opt_in():
    with pytest.raises(ValueError, match="must be an https URL"):
        FacilityTokenVerifier("http://hub.example.org/hub/casa-issuer", "a")
    FacilityTokenVerifier("http://hub.example.org/hub/casa-issuer", "a", allow_insecure_http=True)
    with pytest.raises(ValueError, match="audience"):
        FacilityTokenVerifier(ISS, [])


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_tokens_of_both_algorithms_verify_with_scope_decisions(tmp_path, alg):
    issuer = make_issuer(tmp_path, alg)
    fetch = Documents(issuer)
    v = FacilityTokenVerifier(ISS, ["xcache.test", "other.test"], fetch=fetch)
    token = issuer.mint("alice", "xcache").token
    assert v.verify(token)["sub"] == "alice"
    assert fetch.requests == [f"{ISS}/.well-known/openid-configuration", f"{ISS}/jwks.json"]
    assert v.test(token, "read", "/user/alice/f")
    assert v.test(token, "write", "/user/alice/out/f"), "storage.create counts as write"
    assert not v.test(token, "write", "/user/alice/f")
    assert not v.test(token, "read", "/user/bob")
    condor = FacilityTokenVerifier(ISS, "condor.test", jwks=issuer.jwks())
    job_token = issuer.mint("alice", "condor").token
    assert condor.test(job_token, "compute.create") and not condor.test(job_token, "compute.cancel")
    with pytest.raises(ValueError, match="needs a path"):
        v.test(token, "read")
    with pytest.raises(ValueError, match="absolute"):
        v.test(token, "read", "user/alice")


def test_new_key_is_picked_up_after_rotation(tmp_path):
    old = make_issuer(tmp_path / "old")
    new = make_issuer(tmp_path / "new")
    fetch = Documents(old)
    now = [0.0]
    v = FacilityTokenVerifier(ISS, "xcache.test", fetch=fetch, min_refetch_interval=30, clock=lambda: now[0])
    assert v.verify(old.mint("alice", "xcache").token)
    fetch.issuer = new  # the hub now publishes (and signs with) another key
    token = new.mint("alice", "xcache").token
    with pytest.raises(TokenRejected) as e:
        v.verify(token)
    assert e.value.reason == "unknown_kid"
    now[0] += 30
    assert v.verify(token)["sub"] == "alice"


@pytest.mark.parametrize("over, why", [
    ({"issuer": "https://evil.test/hub/casa-issuer"}, "names another issuer"),
    ({"jwks_uri": "http://evil.test/jwks.json"}, "not an allowed URL"),
    ({"jwks_uri": None}, "not an allowed URL"),
])
def test_bad_discovery_documents_give_no_keys(tmp_path, caplog, over, why):
    issuer = make_issuer(tmp_path)
    v = FacilityTokenVerifier(ISS, "xcache.test", fetch=Documents(issuer, over))
    token = issuer.mint("alice", "xcache").token
    with pytest.raises(TokenRejected) as e:
        v.verify(token)
    assert e.value.reason == "keys_unavailable"
    assert why in caplog.text and token.split(".")[2] not in caplog.text


def test_unreachable_issuer_gives_keys_unavailable(tmp_path):
    port = free_port()  # nothing listens there
    issuer = make_issuer(tmp_path)
    v = FacilityTokenVerifier(f"http://127.0.0.1:{port}/hub/casa-issuer", "xcache.test")
    with pytest.raises(TokenRejected, match=f"127.0.0.1:{port}") as e:
        v.verify(issuer.mint("alice", "xcache").token)
    assert e.value.reason == "keys_unavailable"


def test_keys_survive_a_failed_refresh(tmp_path):
    issuer = make_issuer(tmp_path)
    fetch = Documents(issuer)
    now = [0.0]
    v = FacilityTokenVerifier(ISS, "xcache.test", fetch=fetch, cache_seconds=300, clock=lambda: now[0])
    token = issuer.mint("alice", "xcache").token
    v.verify(token)
    fetch.discovery_over = {"issuer": "https://moved.test"}  # the refresh will fail
    now[0] += 400
    assert v.verify(token)["sub"] == "alice", "a failed refresh keeps the keys already known"
    assert len(fetch.requests) == 3


def test_static_jwks_never_fetches(tmp_path):
    issuer = make_issuer(tmp_path)
    v = FacilityTokenVerifier(ISS, "xcache.test", jwks=issuer.jwks(), fetch=lambda url: pytest.fail(url))
    assert v.verify(issuer.mint("alice", "xcache").token)["aud"] == "xcache.test"
    assert v.refresh_keys(force=True) is False


# ---- header and time claims (casa_hub.tokens.claims_policy) -----------------------------------------
# Tokens signed with the issuer's REAL key, so that only the odd header or claim can make them fail.

def forged(issuer: CasaTokenIssuer, header: dict | None = None, **claims) -> str:
    """A real mint's claims changed by ``claims`` (None removes one), signed with the issuer's own key;
    ``header`` is merged over ``{"kid": <the real kid>, "typ": "JWT"}`` (None removes a parameter)."""
    body = {k: v for k, v in {**issuer.mint("alice", "xcache").claims, **claims}.items() if v is not None}
    key = issuer.signing_key
    headers = {k: v for k, v in {"kid": key.kid, "typ": "JWT", **(header or {})}.items() if v is not None}
    return jwt.encode(body, key.private_key, algorithm=key.alg, headers=headers)


def now() -> int:
    return int(time.time())


HOSTILE = {  # case: (token maker, reason, part of the message)
    "7 h lifetime": (lambda i: forged(i, iat=now() - 60, nbf=now() - 60, exp=now() - 60 + 7 * 3600),
                     "lifetime_too_long", "longer than the maximum of 21600 s"),
    "exp = 2**53": (lambda i: forged(i, exp=2**53), "lifetime_too_long", "longer than the maximum"),
    "exp as a string": (lambda i: forged(i, exp=str(now() + 600)), "invalid_time_claim", "exp is a str"),
    "exp as a float": (lambda i: forged(i, exp=float(now() + 600)), "invalid_time_claim", "exp is a float"),
    "exp as a bool": (lambda i: forged(i, exp=True), "invalid_time_claim", "exp is a bool"),
    "iat as a float": (lambda i: forged(i, iat=float(now())), "invalid_time_claim", "iat is a float"),
    "nbf as a string": (lambda i: forged(i, nbf=str(now())), "invalid_time_claim", "nbf is a str"),
    "no nbf": (lambda i: forged(i, nbf=None), "missing_claim", "['nbf']"),
    "no iat": (lambda i: forged(i, iat=None), "missing_claim", "['iat']"),
    "exp before iat": (lambda i: forged(i, iat=now(), exp=now() - 1), "invalid_time_claim", "not after its iat"),
    "missing kid": (lambda i: forged(i, {"kid": None}), "missing_kid", "no key id"),
    "empty kid": (lambda i: forged(i, {"kid": ""}), "missing_kid", "no key id"),
    "unknown kid": (lambda i: forged(i, {"kid": "not-published"}), "unknown_kid", "not published"),
    'crit: ["exp"]': (lambda i: forged(i, {"crit": ["exp"]}), "unsupported_crit", "crit"),
    'crit: ["b64"]': (lambda i: forged(i, {"crit": ["b64"]}), "unsupported_crit", "crit"),
    "iat in the future": (lambda i: forged(i, iat=now() + 600, exp=now() + 1200),
                          "not_yet_valid", "issued in the future (iat)"),
    "iat in the future, exp = iat": (lambda i: forged(i, iat=now() + 600, exp=now() + 600),
                                     "not_yet_valid", "issued in the future (iat)"),
    "nbf in the future beyond the leeway": (lambda i: forged(i, nbf=now() + 120), "not_yet_valid", "(nbf)"),
    "expired beyond the leeway": (lambda i: forged(i, iat=now() - 1260, nbf=now() - 1260, exp=now() - 60),
                                  "expired", "has expired"),
}


@pytest.fixture(scope="module")
def es_issuer(tmp_path_factory) -> CasaTokenIssuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_tokens_with_odd_headers_or_time_claims_are_refused(es_issuer, caplog, case):
    make, reason, message = HOSTILE[case]
    token = make(es_issuer)
    v = FacilityTokenVerifier(ISS, "xcache.test", jwks=es_issuer.jwks())
    with pytest.raises(TokenRejected) as e:
        v.verify(token)
    assert (e.value.reason, message in str(e.value)) == (reason, True), f"{case}: {e.value.reason}: {e.value}"
    assert reason in REASONS
    for part in token.split("."):
        assert part not in str(e.value) and part not in caplog.text, "a token part leaked"


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_a_normal_token_and_one_of_exactly_6_hours_verify(tmp_path, alg):
    issuer = make_issuer(tmp_path, alg)
    v = FacilityTokenVerifier(ISS, "xcache.test", jwks=issuer.jwks())
    assert v.verify(issuer.mint("alice", "xcache").token)["sub"] == "alice"
    t = now()
    six_hours = forged(issuer, iat=t, nbf=t, exp=t + 6 * 3600)
    assert v.verify(six_hours)["exp"] == t + 21600
    assert v.test(six_hours, "read", "/user/alice/f")


def test_the_leeway_covers_small_clock_differences_and_no_more(es_issuer):
    default = FacilityTokenVerifier(ISS, "xcache.test", jwks=es_issuer.jwks())
    strict = FacilityTokenVerifier(ISS, "xcache.test", jwks=es_issuer.jwks(), leeway=0)
    assert (default.leeway, default.max_lifetime) == (30, 21600)
    t = now()
    cases = {
        "issued 20 s in the future": (forged(es_issuer, iat=t + 20, nbf=t + 20, exp=t + 620), "not_yet_valid"),
        "expired 10 s ago": (forged(es_issuer, iat=t - 1210, nbf=t - 1210, exp=t - 10), "expired"),
        "lifetime 6 h + 20 s": (forged(es_issuer, iat=t - 5, nbf=t - 5, exp=t - 5 + 21620), "lifetime_too_long"),
    }
    for case, (token, reason) in cases.items():
        assert default.verify(token)["sub"] == "alice", f"{case}: within the default leeway of 30 s"
        with pytest.raises(TokenRejected) as e:
            strict.verify(token)
        assert e.value.reason == reason, f"{case} with leeway=0: {e.value.reason}"
    future = cases["issued 20 s in the future"][0]
    assert default.test(future, "read", "/user/alice"), "scope decisions use the same leeway"
    assert default.authorize(future, "read", "/user/alice")["sub"] == "alice"


def test_a_shorter_maximum_lifetime(es_issuer):
    v = FacilityTokenVerifier(ISS, "xcache.test", jwks=es_issuer.jwks(), max_lifetime=600, leeway=0)
    with pytest.raises(TokenRejected, match="maximum of 600 s") as e:
        v.verify(es_issuer.mint("alice", "xcache").token)  # the grant's default lifetime: 20 minutes
    assert e.value.reason == "lifetime_too_long"
    t = now()
    assert v.verify(forged(es_issuer, iat=t, nbf=t, exp=t + 600))["sub"] == "alice"


@pytest.mark.parametrize("settings, message", [
    ({"max_lifetime": 0}, "max_lifetime: a whole number of seconds from 1 to 21600"),
    ({"max_lifetime": 21601}, "max_lifetime"),
    ({"max_lifetime": 600.0}, "max_lifetime"),
    ({"max_lifetime": True}, "max_lifetime"),
    ({"leeway": -1}, "leeway: a whole number of seconds from 0 to 300"),
    ({"leeway": 301}, "leeway"),
    ({"leeway": "30"}, "leeway"),
])
def test_bad_policy_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        FacilityTokenVerifier(ISS, "xcache.test", jwks={"keys": []}, **settings)


def test_the_policy_function_on_its_own(es_issuer):
    real = es_issuer.mint("alice", "xcache")
    header = jwt.get_unverified_header(real.token)
    check_token_times_and_header(header, real.claims, known_kids={header["kid"]})
    with pytest.raises(TokenRejected) as e:
        check_token_times_and_header(header, real.claims, known_kids={"another"})
    assert e.value.reason == "unknown_kid"
    for bad_header, reason in [({**header, "alg": "HS256"}, "disallowed_alg"), ({**header, "alg": "none"},
                               "disallowed_alg"), ({**header, "crit": []}, "unsupported_crit")]:
        with pytest.raises(TokenRejected) as e:
            check_token_times_and_header(bad_header, real.claims)
        assert e.value.reason == reason
    later = real.claims["iat"] + 1230  # 30 s after exp: just past the leeway
    with pytest.raises(TokenRejected) as e:
        check_token_times_and_header(header, real.claims, now=later)
    assert e.value.reason == "expired"
    check_token_times_and_header(header, real.claims, now=later - 1)
