"""ID token checks against the real provider's published JWKS, with forged and broken tokens.

Tokens are signed here with the provider's own key (read from the demo state) or with a foreign key,
so each check in casa_hub.auth.oidc.verify_id_token is exercised against the real key set.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from casa_hub.auth.oidc import JWKSCache, OIDCError, discover, verify_id_token

pytestmark = pytest.mark.e2e
CLIENT = "casa-hub"


@pytest.fixture(scope="module")
def idp_key(facility):
    jwks = json.loads((facility.state_dir / "idp" / "idp-signing-keys.json").read_text())
    jwk = jwks["keys"][0]
    return jwk["kid"], jwt.PyJWK(jwk).key


def claims(facility, **over):
    now = int(time.time())
    base = {"iss": facility.idp_url, "sub": "alice", "aud": CLIENT, "iat": now, "exp": now + 300,
            "nonce": "n-123"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


async def check(facility, token, nonce="n-123"):
    meta = await discover(facility.idp_url, attempts=1)
    return await verify_id_token(token, jwks=JWKSCache(meta.jwks_uri), issuer=meta.issuer,
                                 client_id=CLIENT, nonce=nonce, leeway=0)


async def test_genuine_token_verifies(facility, idp_key):
    kid, key = idp_key
    token = jwt.encode(claims(facility), key, algorithm="RS256", headers={"kid": kid})
    assert (await check(facility, token))["sub"] == "alice"


def foreign_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("case, make, message", [
    ("forged signature, real kid", lambda f, kid, key: jwt.encode(claims(f), foreign_key(), "RS256", {"kid": kid}),
     "invalid"),
    ("unknown kid", lambda f, kid, key: jwt.encode(claims(f), foreign_key(), "RS256", {"kid": "other"}),
     "does not publish"),
    ("alg none", lambda f, kid, key: jwt.encode(claims(f), None, "none", {"kid": kid}), "disallowed algorithm"),
    ("HS256 with the public key", lambda f, kid, key: jwt.encode(claims(f), "s" * 32, "HS256", {"kid": kid}),
     "disallowed algorithm"),
    ("other audience", lambda f, kid, key: jwt.encode(claims(f, aud="other"), key, "RS256", {"kid": kid}),
     "invalid"),
    ("other issuer", lambda f, kid, key: jwt.encode(claims(f, iss="http://evil"), key, "RS256", {"kid": kid}),
     "invalid"),
    ("expired", lambda f, kid, key: jwt.encode(claims(f, exp=int(time.time()) - 5), key, "RS256", {"kid": kid}),
     "expired"),
    ("wrong nonce", lambda f, kid, key: jwt.encode(claims(f, nonce="replayed"), key, "RS256", {"kid": kid}),
     "nonce"),
    ("no nonce", lambda f, kid, key: jwt.encode(claims(f, nonce=None), key, "RS256", {"kid": kid}), "nonce"),
    ("issued long ago", lambda f, kid, key: jwt.encode(claims(f, iat=int(time.time()) - 3600), key, "RS256",
                                                       {"kid": kid}), "issue time"),
    ("several audiences, azp of another client",
     lambda f, kid, key: jwt.encode(claims(f, aud=[CLIENT, "x"], azp="x"), key, "RS256", {"kid": kid}), "azp"),
    ("no sub", lambda f, kid, key: jwt.encode(claims(f, sub=None), key, "RS256", {"kid": kid}), "invalid"),
    ("garbage", lambda f, kid, key: "not.a.jwt", "malformed"),
])
async def test_bad_id_tokens_are_refused(facility, idp_key, case, make, message):
    kid, key = idp_key
    with pytest.raises(OIDCError, match=message) as e:
        await check(facility, make(facility, kid, key))
    assert e.value.reason == "bad_id_token"


async def test_unreachable_provider_is_a_clear_error():
    with pytest.raises(OIDCError, match="unreachable") as e:
        await discover("http://127.0.0.1:9", attempts=2, first_delay=0.01)
    assert e.value.reason == "provider_unreachable"
