"""Key rotation: next keys are published before they sign, retired keys until their tokens expire."""

from __future__ import annotations

import json
import logging

import jwt
import pytest

from casa_hub.tokens.issuer import CasaTokenIssuer, IssuerError
from casa_hub.tokens.keyring import (
    DEFAULT_MIN_PUBLISHED,
    MANIFEST,
    RETIRE_LEEWAY,
    add_next,
    load_keyring,
    promote,
    prune,
)
from casa_hub.tokens.keys import KeyError_

GRANTS = {"xcache": {"audience": "https://xcache.test", "scopes": ["storage.read:/user/{username}"],
                     "lifetime": 600}}
T0 = 1_800_000_000


def kids(ring) -> dict[str, str]:
    return {k.kid: ring.roles[k.kid] for k in ring.published}


def test_rotation_steps_publish_next_then_sign_then_retire_then_prune(tmp_path):
    first = add_next(tmp_path, now=T0)
    ring = load_keyring(tmp_path, max_lifetime=600, now=T0)
    assert ring.signing.kid == first.kid and kids(ring) == {first.kid: "signing"}

    second = add_next(tmp_path, "RS256", now=T0 + 10)
    ring = load_keyring(tmp_path, max_lifetime=600, now=T0 + 10)
    assert ring.signing.kid == first.kid, "a next key must not sign yet"
    assert kids(ring) == {first.kid: "signing", second.kid: "next"}

    with pytest.raises(KeyError_, match=r"published for 5 s, less than 600 s"):
        promote(tmp_path, now=T0 + 15)
    new, old = promote(tmp_path, now=T0 + 10 + DEFAULT_MIN_PUBLISHED)
    assert (new, old) == (second.source.split("/")[-1], first.source.split("/")[-1])
    retired_at = T0 + 10 + DEFAULT_MIN_PUBLISHED
    ring = load_keyring(tmp_path, max_lifetime=600, now=retired_at + 1)
    assert ring.signing.kid == second.kid
    assert kids(ring) == {second.kid: "signing", first.kid: "retired"}
    assert ring.changes_at == retired_at + 600 + RETIRE_LEEWAY

    # still published while its last token may be valid, gone afterwards
    assert first.kid in kids(load_keyring(tmp_path, 600, now=retired_at + 600 + RETIRE_LEEWAY))
    later = load_keyring(tmp_path, 600, now=retired_at + 600 + RETIRE_LEEWAY + 1)
    assert first.kid not in kids(later) and later.expired_files == [old]

    assert prune(tmp_path, 600, now=retired_at + 10) == [], "prune must keep keys still needed"
    assert prune(tmp_path, 600, now=retired_at + 600 + RETIRE_LEEWAY + 1) == [old]
    assert not (tmp_path / old).exists()
    assert json.loads((tmp_path / MANIFEST).read_text())["retired"] == {}


def test_promote_without_next_key_and_unlisted_keys_are_clear_errors(tmp_path):
    add_next(tmp_path, now=T0)
    with pytest.raises(KeyError_, match="no next key"):
        promote(tmp_path, now=T0 + 10_000)
    (tmp_path / "stray.pem").write_bytes((tmp_path / json.loads(
        (tmp_path / MANIFEST).read_text())["signing"]).read_bytes())
    with pytest.raises(KeyError_, match="stray.pem"):
        load_keyring(tmp_path, 600, now=T0)


def test_directory_without_manifest_signs_with_first_key_and_publishes_all(tmp_path):
    from casa_hub.tokens.keys import write_new_key

    a = write_new_key(tmp_path / "a.pem")
    b = write_new_key(tmp_path / "b.pem")
    ring = load_keyring(tmp_path, 600)
    assert ring.signing.kid == a.kid and {k.kid for k in ring.published} == {a.kid, b.kid}
    # the first rotation step adopts that state: b becomes next, a keeps signing
    add_next(tmp_path, now=T0)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["signing"] == "a.pem" and "b.pem" in manifest["next"]


def test_issuer_follows_rotation_and_old_tokens_keep_verifying(tmp_path):
    keydir = tmp_path / "keys"
    add_next(keydir, now=T0)
    iss = CasaTokenIssuer(issuer_url="https://issuer.test", key_dir=str(keydir), grants=GRANTS,
                          key_reload_interval=0)
    before = iss.mint("alice", "xcache")
    old_kid = jwt.get_unverified_header(before.token)["kid"]

    nxt = add_next(keydir)
    assert {k["kid"] for k in iss.jwks()["keys"]} == {old_kid, nxt.kid}
    assert jwt.get_unverified_header(iss.mint("alice", "xcache").token)["kid"] == old_kid

    promote(keydir, force=True)
    after = iss.mint("alice", "xcache")
    assert jwt.get_unverified_header(after.token)["kid"] == nxt.kid
    published = {k["kid"]: jwt.PyJWK(k) for k in iss.jwks()["keys"]}
    for tok in (before, after):
        kid = jwt.get_unverified_header(tok.token)["kid"]
        claims = jwt.decode(tok.token, published[kid].key, algorithms=["ES256"],
                            audience="https://xcache.test", issuer="https://issuer.test")
        assert claims["jti"] == tok.claims["jti"]


def test_issuer_keeps_current_keys_when_a_rotation_is_broken(tmp_path, caplog):
    keydir = tmp_path / "keys"
    first = add_next(keydir, now=T0)
    iss = CasaTokenIssuer(issuer_url="https://issuer.test", key_dir=str(keydir), grants=GRANTS,
                          key_reload_interval=0)
    assert iss.signing_key.kid == first.kid
    (keydir / MANIFEST).write_text('{"signing": "missing.pem"}')
    with caplog.at_level(logging.ERROR):
        assert iss.signing_key.kid == first.kid
        assert iss.mint("alice", "xcache").claims["sub"] == "alice"
    assert "missing.pem" in caplog.text and "Keeping the current signing keys" in caplog.text


def test_broken_key_dir_at_start_names_the_setting(tmp_path):
    (tmp_path / MANIFEST).write_text("not json")
    iss = CasaTokenIssuer(issuer_url="https://issuer.test", key_dir=str(tmp_path), grants=GRANTS)
    with pytest.raises(IssuerError, match="CasaTokenIssuer.key_dir"):
        iss.check_config()
