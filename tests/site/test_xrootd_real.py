"""A real XRootD origin and XCache verify facility tokens from the real broker themselves.

Both servers load the ``scitokens.cfg`` printed by ``casa-hub site-config xrootd`` and fetch the hub's
discovery document and JWKS over https (see tests/xrootd_fixture.py). Reads go through the cache:
root:// with ``BEARER_TOKEN_FILE`` (xrdcp) and https with ``Authorization: Bearer`` (curl).
Refusals are XRootD's own: xrdcp exit code 52 (login refused: no token, an unpublished key,
expired) or 54 (authenticated, but the token does not authorize this path or audience), https 403.
"""

from __future__ import annotations

import time

import pytest
import requests
from traitlets.config import Config
from xrootd_fixture import (
    CACHE_AUDIENCE,
    ISSUER_URL,
    ORIGIN_AUDIENCE,
    ORIGIN_PORT,
    Token,
    broker_token,
)

from casa_hub.tokens.issuer import CasaTokenIssuer
from casa_hub.tokens.keyring import MANIFEST, add_next, promote

pytestmark = pytest.mark.e2e

ALICE_FILE = "/store/user/alice/events.txt"
BOB_FILE = "/store/user/bob/events.txt"
XCACHE_GRANT = {"audience": CACHE_AUDIENCE, "scopes": ["storage.read:/user/{username}"], "groups": ["physicists"]}

# xrdcp exit codes: 52 = the server refused the login (token not valid), 54 = operation refused
AUTH_FAILED, NOT_AUTHORIZED = 52, 54


def out_of_hub_issuer(key_dir, generate: bool = False) -> CasaTokenIssuer:
    """An issuer with the facility's issuer URL and xcache grant, signing with the keys in key_dir."""
    cfg = Config()
    cfg.CasaTokenIssuer.issuer_url = ISSUER_URL
    cfg.CasaTokenIssuer.key_dir = str(key_dir)
    cfg.CasaTokenIssuer.generate_key_if_missing = "ES256" if generate else ""
    cfg.CasaTokenIssuer.grants = {"xcache": XCACHE_GRANT}
    return CasaTokenIssuer(config=cfg)


@pytest.fixture(scope="module")
def tokens(xrootd_facility, xrootd_site, tmp_path_factory) -> dict[str, Token]:
    """Tokens by purpose (reprs hide the values); the valid ones come from the real broker."""
    fac = xrootd_facility
    hub_key_issuer = out_of_hub_issuer(fac.state_dir / "issuer-keys")
    foreign = out_of_hub_issuer(tmp_path_factory.mktemp("foreign-key"), generate=True)
    return {
        "alice": broker_token(fac, "alice", "xcache"),
        "bob": broker_token(fac, "bob", "xcache"),
        "wrong-audience": broker_token(fac, "alice", "htcondor"),
        # same key as the hub, issued an hour ago: expired 40 minutes ago
        "expired": Token(hub_key_issuer.mint("alice", "xcache", ["physicists"], now=time.time() - 3600).token),
        # the hub's key, now: the control for "expired"
        "hub-key-now": Token(hub_key_issuer.mint("alice", "xcache", ["physicists"]).token),
        # right issuer URL and claims, but a key the hub never published
        "foreign-key": Token(foreign.mint("alice", "xcache", ["physicists"]).token),
    }


def assert_refused(result, status_or_code, content: bytes) -> None:
    assert content not in result.stdout, "refused request returned the file content"
    if result.status is None:  # root://
        assert result.returncode == status_or_code, (result.returncode, result.stderr)
    else:
        assert result.status == status_or_code, (result.status, result.stdout[:200])


def test_servers_run_the_generated_scitokens_cfg(xrootd_site):
    for name, audience in (("origin", ORIGIN_AUDIENCE), ("cache", CACHE_AUDIENCE)):
        cfg = xrootd_site.scitokens_cfgs[name].read_text()
        assert f"[Global]\naudience = {audience}\n" in cfg
        assert f"[Issuer casa]\nissuer = {ISSUER_URL}\nbase_path = /store\n" in cfg
        log = xrootd_site.xrootd_log(name)
        assert f"libXrdAccSciTokens-5.so config={xrootd_site.scitokens_cfgs[name]}" in log
        assert "XrdAccSciTokens: Initialized" in log


def test_owner_reads_own_file_through_the_cache(xrootd_site, tokens):
    content = xrootd_site.files[ALICE_FILE]
    r = xrootd_site.xrdcp(ALICE_FILE, tokens["alice"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == content
    https = xrootd_site.https_get(ALICE_FILE, tokens["alice"])
    assert https.status == 200 and https.stdout == content, (https.status, https.stderr)
    # the cache holds the file now (it was fetched from the origin with the cache's own token)
    assert (xrootd_site.server_dir("cache") / "data" / ALICE_FILE.lstrip("/")).exists()


def test_xrootd_verified_with_the_hubs_published_jwks(xrootd_facility, xrootd_site, tokens):
    assert xrootd_site.xrdcp(ALICE_FILE, tokens["alice"]).returncode == 0
    published = requests.get(f"{xrootd_facility.hub_url}/hub/casa-issuer/jwks.json", timeout=10).json()
    held = xrootd_site.cached_jwks()
    assert held["cache"] == published and held["origin"] == published
    fetched = xrootd_site.forwarded_requests()
    assert "GET /hub/casa-issuer/.well-known/openid-configuration HTTP/1.1" in fetched
    assert "GET /hub/casa-issuer/jwks.json HTTP/1.1" in fetched


def test_other_users_path_is_refused(xrootd_site, tokens):
    bobs = xrootd_site.files[BOB_FILE]
    r = xrootd_site.xrdcp(BOB_FILE, tokens["alice"])
    assert_refused(r, NOT_AUTHORIZED, bobs)
    assert "[3010]" in r.stderr and "permission denied" in r.stderr
    assert_refused(xrootd_site.https_get(BOB_FILE, tokens["alice"]), 403, bobs)
    # the file is there and readable by its owner
    own = xrootd_site.xrdcp(BOB_FILE, tokens["bob"])
    assert own.returncode == 0 and own.stdout == bobs, own.stderr


@pytest.mark.parametrize("case, root_code, server_reason", [
    ("expired", AUTH_FAILED, "token verification failed: token expired"),
    ("foreign-key", AUTH_FAILED, "Key ID is not published by the issuer"),
    ("wrong-audience", NOT_AUTHORIZED, "'aud' claim verification failed"),
    ("no-token", AUTH_FAILED, None),
])
def test_bad_tokens_are_refused_by_xrootd(xrootd_site, tokens, case, root_code, server_reason):
    content = xrootd_site.files[ALICE_FILE]
    token = tokens.get(case)  # None: no token at all
    mark = len(xrootd_site.xrootd_log("cache"))
    r = xrootd_site.xrdcp(ALICE_FILE, token)
    assert_refused(r, root_code, content)
    expected = "Auth failed" if root_code == AUTH_FAILED else "[3010]"
    assert expected in r.stderr, r.stderr
    assert_refused(xrootd_site.https_get(ALICE_FILE, token), 403, content)
    if server_reason:  # the cache's SciTokens plugin says why, for both protocols
        log = xrootd_site.xrootd_log("cache")[mark:]
        assert log.count(server_reason) >= 2, log[-2000:]


def test_expired_token_fails_only_because_it_expired(xrootd_site, tokens):
    # the same key and claims, minted now, are accepted: the refusal above is about exp
    r = xrootd_site.xrdcp(ALICE_FILE, tokens["hub-key-now"])
    assert r.returncode == 0 and r.stdout == xrootd_site.files[ALICE_FILE], r.stderr


def test_cache_token_is_not_accepted_by_the_origin(xrootd_site, tokens):
    # the origin has its own audience: a user's cache token cannot bypass the cache
    r = xrootd_site.xrdcp(ALICE_FILE, tokens["alice"], port=ORIGIN_PORT)
    assert_refused(r, NOT_AUTHORIZED, xrootd_site.files[ALICE_FILE])


def test_keys_can_be_fetched_again(xrootd_facility, xrootd_site):
    xrootd_site.refresh_issuer_keys()
    assert xrootd_site.cached_jwks() == {"origin": None, "cache": None}
    before = len(xrootd_site.forwarded_requests())
    fresh = broker_token(xrootd_facility, "alice", "xcache")  # a token the plugin has not cached
    r = xrootd_site.xrdcp(ALICE_FILE, fresh)
    assert r.returncode == 0, r.stderr
    assert xrootd_site.cached_jwks()["cache"] is not None
    assert "GET /hub/casa-issuer/jwks.json HTTP/1.1" in xrootd_site.forwarded_requests()[before:]


def test_no_token_value_in_service_logs(xrootd_facility, xrootd_site, tokens):
    assert xrootd_site.xrdcp(ALICE_FILE, tokens["alice"]).returncode == 0
    logs = [xrootd_site.xrootd_log(n) for n in ("origin", "cache")]
    logs += [xrootd_site.log_tail(n, 100_000) for n in ("forwarder", "bridge")]
    logs.append((xrootd_facility.log_dir / "hub.log").read_text(errors="replace"))
    for name, token in tokens.items():
        assert all(token not in log for log in logs), f"the {name} token appears in a service log"


def _kid(token: str) -> str:
    import jwt

    return jwt.get_unverified_header(token)["kid"]


def _published(fac) -> set[str]:
    return {k["kid"] for k in requests.get(f"{fac.hub_url}/hub/casa-issuer/jwks.json", timeout=10).json()["keys"]}


def _wait(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_retired_key_is_honoured_until_unpublished_then_refused(xrootd_facility, xrootd_site):
    """Runs last: it rotates the hub's key. A token of the retired key reads while the key is still
    published; once its retirement has lapsed the hub stops publishing it and XRootD refuses it."""
    import json

    fac = xrootd_facility
    keydir = fac.state_dir / "issuer-keys"
    before = broker_token(fac, "alice", "xcache")
    old_kid = _kid(before)
    old_file = next(p for p in keydir.glob("*.pem")
                    if CasaTokenIssuer(issuer_url=ISSUER_URL, key_files=[str(p)]).signing_key.kid == old_kid)

    new = add_next(keydir)
    promote(keydir, force=True)
    _wait(lambda: _kid(broker_token(fac, "alice", "xcache")) == new.kid, "the new key to sign")
    assert _published(fac) == {old_kid, new.kid}

    xrootd_site.refresh_issuer_keys()
    r = xrootd_site.xrdcp(ALICE_FILE, before)
    assert r.returncode == 0, f"a retired key's unexpired token must still read: {r.stderr}"

    # let the retirement lapse (as if its longest-lived token had expired): the hub unpublishes it
    manifest = json.loads((keydir / MANIFEST).read_text())
    manifest["retired"][old_file.name] = int(time.time()) - 7 * 24 * 3600
    (keydir / MANIFEST).write_text(json.dumps(manifest))
    _wait(lambda: old_kid not in _published(fac), "the retired key to leave the JWKS")

    xrootd_site.refresh_issuer_keys()
    old_key_issuer = CasaTokenIssuer(issuer_url=ISSUER_URL, key_files=[str(old_file)],
                                     grants={"xcache": XCACHE_GRANT})
    late = Token(old_key_issuer.mint("alice", "xcache", ["physicists"]).token)  # unexpired, unpublished key
    refusals = xrootd_site.xrootd_log("cache").count("Key ID is not published")
    assert_refused(xrootd_site.xrdcp(ALICE_FILE, late), AUTH_FAILED, xrootd_site.files[ALICE_FILE])
    assert xrootd_site.xrootd_log("cache").count("Key ID is not published") > refusals, \
        "XRootD must refuse it because the key is no longer published"
    fresh = broker_token(fac, "alice", "xcache")
    assert _kid(fresh) == new.kid and xrootd_site.xrdcp(ALICE_FILE, fresh).returncode == 0
