"""The issuer, keys and grants, in-process."""

from __future__ import annotations

import jwt
import pytest
from traitlets.config import Config

from casa_hub.tokens.grants import GrantConfigError, UnsafeUsername, check_username, parse_grant
from casa_hub.tokens.issuer import CasaTokenIssuer, IssuerError
from casa_hub.tokens.keys import SigningKey, jwk_thumbprint, write_new_key
from casa_hub.tokens.store import fresh_tokens

GRANTS = {
    "xcache": {"audience": "https://xcache.test", "scopes": ["storage.read:/user/{username}"],
               "groups": ["physicists"]},
    "condor": {"audience": "condor.test", "scopes": "compute.read compute.create", "lifetime": 600},
}


@pytest.fixture
def issuer(tmp_path):
    cfg = Config()
    cfg.CasaTokenIssuer.issuer_url = "https://hub.test/hub/casa-issuer"
    cfg.CasaTokenIssuer.key_dir = str(tmp_path / "keys")
    cfg.CasaTokenIssuer.generate_key_if_missing = "ES256"
    cfg.CasaTokenIssuer.grants = GRANTS
    iss = CasaTokenIssuer(config=cfg)
    iss.check_config()
    return iss


def test_rfc7638_thumbprint_example():
    # RFC 7638 section 3.1 example key and its thumbprint
    jwk = {
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPe"
             "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368Q"
             "QMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2N"
             "cRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_mint_carries_wlcg_claims_and_verifies(issuer):
    minted = issuer.mint("alice", "xcache", ["physicists"], now=1_700_000_000)
    key = issuer.signing_key
    header = jwt.get_unverified_header(minted.token)
    assert header == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    claims = jwt.decode(minted.token, key.private_key.public_key(), algorithms=["ES256"],
                        audience="https://xcache.test", options={"verify_exp": False})
    assert claims["iss"] == "https://hub.test/hub/casa-issuer"
    assert claims["sub"] == "alice"
    assert claims["scope"] == "storage.read:/user/alice"
    assert claims["exp"] - claims["iat"] == 1200 and claims["nbf"] == claims["iat"] == 1_700_000_000
    assert claims["wlcg.ver"] == "1.0" and claims["wlcg.groups"] == ["/physicists"]
    assert minted.token not in str(minted.describe())


def test_grant_refused_outside_its_groups(issuer):
    with pytest.raises(IssuerError, match="may not receive grant 'xcache'"):
        issuer.mint("mallory", "xcache", ["visitors"])
    assert issuer.grants_for(["visitors"]) == ["condor"]


def test_audit_line_per_mint_without_token(issuer, caplog):
    caplog.set_level("INFO")
    minted = issuer.mint("alice", "condor")
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("audit")]
    assert len(lines) == 1
    assert f"jti={minted.claims['jti']}" in lines[0] and "user=alice grant=condor" in lines[0]
    assert minted.token not in caplog.text and minted.token.split(".")[2] not in caplog.text


@pytest.mark.parametrize("name", ["../bob", "a/b", "bob\n", "", ".hidden", "x" * 200, "a b", "alice..x", "ålice"])
def test_unsafe_usernames_are_refused_not_rewritten(issuer, name):
    with pytest.raises(UnsafeUsername):
        check_username(name)
    with pytest.raises(UnsafeUsername):
        issuer.mint(name, "condor")


@pytest.mark.parametrize("spec, message", [
    ({"scopes": ["a"]}, "audience: required"),
    ({"audience": "x", "scopes": []}, "scopes: required"),
    ({"audience": "x", "scopes": ["read:/{user}"]}, "unknown placeholder"),
    ({"audience": "x", "scopes": ["a"], "lifetime": 7 * 3600}, "maximum of 21600"),
    ({"audience": "x", "scopes": ["a"], "colour": 1}, "unknown field"),
    ({"audience": "x", "scopes": ["a"], "groups": "cms"}, "groups: a list"),
])
def test_bad_grant_config_names_the_setting(spec, message):
    with pytest.raises(GrantConfigError, match=message) as e:
        parse_grant("xcache", spec, "CasaTokenIssuer.grants")
    assert "CasaTokenIssuer.grants['xcache']" in str(e.value)


def test_bad_grant_rejected_when_configured(tmp_path):
    with pytest.raises(GrantConfigError, match="lifetime"):
        CasaTokenIssuer(grants={"x": {"audience": "a", "scopes": ["s"], "lifetime": -1}})


def test_keys_are_parsed_once_and_kid_is_stable(tmp_path):
    key = write_new_key(tmp_path / "k.pem", "RS256")
    again = SigningKey.from_pem_file(tmp_path / "k.pem")
    assert key.kid == again.kid and key.alg == "RS256"
    iss = CasaTokenIssuer(issuer_url="https://i.test", key_files=[str(tmp_path / "k.pem")], grants=GRANTS)
    assert iss.keys is iss.keys
    assert iss.jwks()["keys"][0]["kid"] == key.kid and "d" not in iss.jwks()["keys"][0]


def test_missing_key_dir_is_a_clear_error(tmp_path):
    iss = CasaTokenIssuer(issuer_url="https://i.test", key_dir=str(tmp_path / "nope"), grants=GRANTS)
    with pytest.raises(Exception, match="does not exist"):
        iss.check_config()


def test_fresh_tokens_reuses_until_half_life_then_remints(issuer):
    state: dict = {}
    first, changed = fresh_tokens(issuer, "alice", ["physicists"], ["xcache", "condor"], state, now=1000)
    assert changed and set(first) == {"xcache", "condor"}
    again, changed = fresh_tokens(issuer, "alice", ["physicists"], ["xcache"], state, now=1000 + 500)
    assert not changed and again["xcache"] == first["xcache"]
    later, changed = fresh_tokens(issuer, "alice", ["physicists"], ["xcache"], state, now=1000 + 700)
    assert changed and later["xcache"] != first["xcache"]
    assert state["casa_tokens"]["xcache"]["token"] == later["xcache"]


def test_rate_limiter_allows_burst_then_refills_at_rate():
    from casa_hub.tokens.broker import RateLimiter

    limiter = RateLimiter(per_minute=30, burst=3)
    assert [limiter.acquire("alice", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("alice", now=0.0)
    assert wait == pytest.approx(2.0)  # one call every 2 s at 30/min
    assert limiter.acquire("bob", now=0.0) == 0.0, "buckets are per user"
    assert limiter.acquire("alice", now=2.0) == 0.0
    assert limiter.acquire("alice", now=2.0) > 0


def test_enable_broker_grants_renew_scope_to_users_and_servers_only():
    from traitlets.config import Config

    from casa_hub.tokens.broker import RENEW_SCOPE, enable_broker

    c = Config()
    c.JupyterHub.load_roles = [{"name": "monitoring", "scopes": ["read:metrics"]}]
    enable_broker(c)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["monitoring"]["scopes"] == ["read:metrics"]
    assert roles["user"]["scopes"] == ["self", f"{RENEW_SCOPE}!user"]
    assert c.Spawner.server_token_scopes == ["users:activity!user", "access:servers!server", f"{RENEW_SCOPE}!user"]
    enable_broker(c)  # idempotent
    assert c.Spawner.server_token_scopes.count(f"{RENEW_SCOPE}!user") == 1
    assert RENEW_SCOPE in c.JupyterHub.custom_scopes
