"""FacilityTokenVerifier without the hub: URL policy, key fetching and rotation, both algorithms.

Tokens come from a real CasaTokenIssuer with keys in a temporary directory; discovery and JWKS are
served by the verifier's ``fetch`` hook from that issuer's own documents.
"""

from __future__ import annotations

import socket

import pytest

from casa_hub.tokens import CasaTokenIssuer
from casa_hub.tokens.verifier import FacilityTokenVerifier, TokenRejected, url_allowed

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
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
