"""Key rotation in the running hub, under load: no failed mint, old tokens keep verifying,
new ones carry the new kid once it signs, and the next key is published before it signs.

The facility (``shared_pages_facility``, tests/support/shared_facilities.py) re-reads its key directory
every 0.2 s and has no broker rate limit to speak of; the modules sharing it verify tokens with the
keys it publishes, whichever signed them."""

from __future__ import annotations

import threading
import time

import jwt
import pytest
import requests
from helpers import admin_api, http_login, verify_with_published_jwks

from casa_hub.demo.facility import DemoFacility
from casa_hub.tokens.keyring import add_next, promote

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rotating_facility(shared_pages_facility):
    """Keys re-read every 0.2 s, broker rate 1000000 per minute (shared_facilities.py)."""
    return shared_pages_facility


def published_kids(fac: DemoFacility) -> set[str]:
    return {k["kid"] for k in requests.get(f"{fac.issuer_url}/jwks.json", timeout=10).json()["keys"]}


def wait_until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_rotation_under_load(rotating_facility, admin_token):
    fac = rotating_facility
    _, r = http_login(fac.hub_url, "alice", fac.password("alice"))
    assert r.status_code == 200
    r = admin_api(fac.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["custom:casa-tokens:renew!user"], "note": "rotation test"})
    assert r.status_code == 201, r.text
    credential = r.json()["token"]
    url = f"{fac.hub_url}/hub/api/casa/tokens/xcache"
    results: list[tuple[float, float, int, str]] = []  # (sent, received, status, token)
    errors: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    resp = s.post(url, headers={"Authorization": f"token {credential}"}, timeout=30)
                except requests.RequestException as e:
                    errors.append(repr(e))
                    continue
                token = resp.json().get("token", "") if resp.status_code == 200 else ""
                results.append((sent, time.monotonic(), resp.status_code, token))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= 20, "the first tokens")
        old_kid = jwt.get_unverified_header(results[0][3])["kid"]
        keydir = fac.state_dir / "issuer-keys"

        new = add_next(keydir)
        wait_until(lambda: new.kid in published_kids(fac), "the next key to be published")
        published_at = time.monotonic()
        wait_until(lambda: sum(r[0] > published_at for r in results) >= 20, "tokens after publication")
        signed_by_next = [r for r in results if r[0] > published_at and
                          jwt.get_unverified_header(r[3])["kid"] == new.kid]
        assert signed_by_next == [], "a next key must be published, not used for signing"

        promote(keydir, force=True)
        wait_until(lambda: any(jwt.get_unverified_header(r[3])["kid"] == new.kid for r in results if r[3]),
                   "a token signed with the new key")
        first_new = min(r[1] for r in results if r[3] and jwt.get_unverified_header(r[3])["kid"] == new.kid)
        wait_until(lambda: sum(r[0] > first_new for r in results) >= 20, "tokens after the switch")
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    assert errors == [] and {r[2] for r in results} == {200}, (errors[:3], {r[2] for r in results})
    assert published_kids(fac) == {old_kid, new.kid}, "the retired key stays published"
    verify_with_published_jwks(results[0][3], fac.issuer_url, "casa-demo-xcache")  # discovery path
    jwks = {k["kid"]: k for k in requests.get(f"{fac.issuer_url}/jwks.json", timeout=10).json()["keys"]}
    by_kid: dict[str, int] = {}
    for sent, _, _, token in results:
        kid = jwt.get_unverified_header(token)["kid"]
        by_kid[kid] = by_kid.get(kid, 0) + 1
        claims = jwt.decode(token, jwt.PyJWK(jwks[kid]).key, algorithms=[jwks[kid]["alg"]],
                            audience="casa-demo-xcache", issuer=fac.issuer_url)
        assert claims["sub"] == "alice"
        if sent > first_new:
            assert kid == new.kid, "once the new key signs, the old one never signs again"
    assert set(by_kid) == {old_kid, new.kid} and all(n >= 20 for n in by_kid.values()), by_kid
    log = (fac.log_dir / "hub.log").read_text()
    assert "retired" in log and new.kid[:12] in log, "the hub logs the rotation"
