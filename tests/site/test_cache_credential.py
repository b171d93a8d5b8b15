"""The cache's own credential (README, "The cache's own credential"), against the real servers.

The XCache reads from the origin with a token of the hub account ``xcache-svc``, the only member of the
group ``xcache-service``: grant ``xcache-origin-short`` (the origin's audience, ``storage.read:/``, 40 s
here), in its ``BEARER_TOKEN_FILE`` ``<token dir>/xcache-origin-short.token`` (tests/support/xrootd_fixture.py).
``casa-hub renew-tokens --token-dir <token dir>`` runs beside it as the servers' user, with the account's
API token (scope ``custom:casa-tokens:renew!user=xcache-svc`` only) in its environment, and reaches the
hub through a relay that the tests cut to take the hub away.

What XRootD 5.5.3 does with the file (measured here): the cache's client reads ``BEARER_TOKEN_FILE`` when
it logs in to the origin, i.e. for each new connection. An open connection keeps the token it logged in
with, and the origin verifies that token again (its SciTokens plugin keeps a verification for 60 s), so
once it has expired, misses over that connection are refused although the file holds a fresh token. The
cache here runs ``pss.setopt DataServerTTL 10``: a connection idle for 10 s is closed (XrdCl looks every
15 s) and the next miss logs in with the current file. A connection that is never idle that long keeps its
login token past expiry: ``test_a_connection_never_idle_keeps_its_login_token_past_expiry`` pins that.
"""

from __future__ import annotations

import itertools
import pwd
import stat
import tempfile
import threading
import time
from pathlib import Path

import jwt
import pytest
import requests
from helpers import admin_api, http_login
from xrootd_fixture import (
    CACHE_GRANT,
    CACHE_SERVICE_GROUP,
    CACHE_SERVICE_USER,
    ORIGIN_AUDIENCE,
    SERVICE_USER,
    SHORT_CACHE_GRANT,
    SHORT_CACHE_LIFETIME,
    HubRelay,
    Token,
    XRootDSite,
    broker_token,
)

pytestmark = pytest.mark.e2e

LIFETIME = SHORT_CACHE_LIFETIME  # 40 s: renewed after 2/3 of it
RENEW_AFTER = 2 / 3 * LIFETIME
RENEW_SCOPE = f"custom:casa-tokens:renew!user={CACHE_SERVICE_USER}"
IDLE_TTL = 10  # pss.setopt DataServerTTL: the cache closes connections to the origin idle this long
CACHED_FILE = "/store/user/alice/miss-0.txt"  # read through the cache in the first test


@pytest.fixture(scope="module")
def service_api_token(xrootd_facility, admin_token) -> Token:
    """The service account signs in once (the hub learns its groups from the provider); an admin then
    gives it an API token that may only renew its own facility tokens."""
    fac = xrootd_facility
    _, r = http_login(fac.hub_url, CACHE_SERVICE_USER, fac.password(CACHE_SERVICE_USER))
    assert r.status_code == 200, r.status_code
    r = admin_api(fac.hub_url, admin_token, f"/users/{CACHE_SERVICE_USER}/tokens", method="POST",
                  json={"scopes": [RENEW_SCOPE], "note": "xcache renewer", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return Token(r.json()["token"])


@pytest.fixture(scope="module")
def cred_site(xrootd_facility, service_api_token) -> XRootDSite:
    """Origin + XCache whose cache token (grant xcache-origin-short) was first written by
    ``casa-hub renew-tokens --once`` into an empty file; idle origin connections closed after 10 s."""
    run_dir = Path(tempfile.mkdtemp(prefix="casa-xrootd-cred-"))
    run_dir.chmod(0o755)
    site = XRootDSite(xrootd_facility, run_dir, cache_grant=SHORT_CACHE_GRANT, cache_api_token=service_api_token,
                      cache_extra_config=(f"pss.setopt DataServerTTL {IDLE_TTL}",))
    try:
        site.start()
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def relay(xrootd_facility) -> HubRelay:
    r = HubRelay(xrootd_facility.hub_port)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def alice(xrootd_facility) -> Token:
    return broker_token(xrootd_facility, "alice", "xcache")  # 20 min: outlives the module


class TokenWatch:
    """Reads the cache's token file every 0.2 s in a thread: every token it held (values kept in memory
    for the leak check, never printed), and any moment it held no readable or an expired token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, tuple[Token, dict]] = {}  # jti -> (token, claims), in order
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TokenWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> dict:
        now = time.time()
        raw = self.path.read_text().strip()
        try:
            claims = jwt.decode(raw, options={"verify_signature": False})
        except jwt.PyJWTError:
            self.problems.append(f"{now:.1f}: the file held no readable token")
            return {}
        if claims["exp"] <= now:
            self.problems.append(f"{now:.1f}: the file held a token expired {now - claims['exp']:.1f} s ago")
        self.seen.setdefault(claims["jti"], (Token(raw), claims))
        return claims

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    @property
    def claims(self) -> list[dict]:
        return [c for _, c in self.seen.values()]

    @property
    def tokens(self) -> list[Token]:
        return [t for t, _ in self.seen.values()]

    def wait_new(self, than: str, timeout: float) -> dict:
        """The claims of the first token after the one with jti ``than`` (waits up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (c := self.sample()).get("jti") == than:
            assert time.monotonic() < deadline, f"no new token within {timeout:.0f} s"
            time.sleep(0.2)
        return c


def claims_of(path: Path) -> dict:
    return jwt.decode(path.read_text().strip(), options={"verify_signature": False})


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def read_new_file(site: XRootDSite, token: str, name: str):
    """Put a file at the origin that the cache has not seen, and read it through the cache (a miss: the
    cache must ask the origin with its own token). (result, the file's content)"""
    path = f"/store/user/alice/{name}.txt"
    content = f"{name} {time.time()}\n".encode()
    site.add_file(path, content)
    assert not site.in_cache(path)
    return site.xrdcp(path, token), content


def origin_logins(site: XRootDSite) -> int:
    """How often the cache has logged in to the origin (with the token in its file at that moment)."""
    return site.xrootd_log("origin").count(f"login as {CACHE_SERVICE_USER}")


def renewer_log(site: XRootDSite) -> str:
    return site.log_tail("renewer", 100_000)


def test_service_account_token_renews_only_its_own_cache_grants(xrootd_facility, service_api_token):
    hub = xrootd_facility.hub_url
    auth = {"Authorization": f"token {service_api_token}"}
    r = requests.get(f"{hub}/hub/api/casa/tokens", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    grants = {g["grant"]: g for g in r.json()["grants"]}
    assert set(grants) == {CACHE_GRANT, SHORT_CACHE_GRANT}  # only what its group (it alone) receives
    for g in grants.values():
        assert g["audience"] == ORIGIN_AUDIENCE and g["scope"] == "storage.read:/" and g["lifetime"] <= 6 * 3600
    assert grants[SHORT_CACHE_GRANT]["lifetime"] == LIFETIME
    r = requests.post(f"{hub}/hub/api/casa/tokens/xcache", headers=auth, timeout=30)
    assert r.status_code == 403, r.text  # a physicists' grant: not for this account
    for path in ("/users/alice", f"/users/{CACHE_SERVICE_USER}/tokens", "/users"):
        assert requests.get(f"{hub}/hub/api{path}", headers=auth, timeout=30).status_code in (403, 404), path


@pytest.mark.slow(180)  # two lifetimes of the cache's 40 s token and more
def test_renewer_keeps_the_caches_token_fresh_and_the_cache_depends_on_it(xrootd_facility, cred_site, relay,
                                                                          service_api_token, alice):
    site = cred_site
    first = claims_of(site.cache_token_file)  # written by `renew-tokens --once` into the empty file at start
    assert first["sub"] == CACHE_SERVICE_USER and first["exp"] - first["iat"] == LIFETIME
    with TokenWatch(site.cache_token_file) as watch:
        proc = site.start_renewer(relay.api_url, service_api_token)
        t0 = time.monotonic()

        # 1. three misses spanning more than two lifetimes: each makes the cache ask the origin, over a new
        #    connection (the last one was idle for longer than DataServerTTL), logged in with the current file
        for i, at in enumerate((0, 45, 90)):
            sleep_until(t0 + at)
            logins = origin_logins(site)
            r, content = read_new_file(site, alice, f"miss-{i}")
            assert r.returncode == 0 and r.stdout == content, f"miss {i} at {at} s: {r.stderr}"
            assert origin_logins(site) > logins, f"miss {i}: the cache did not log in to the origin again"
        assert site.in_cache(CACHED_FILE)
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().find(service_api_token.encode()) == -1
        renewed = watch.claims
        assert len(renewed) >= 4, f"{len(renewed)} tokens in {time.monotonic() - t0:.0f} s"
        print("replaced after (s):", [b["iat"] - a["iat"] for a, b in itertools.pairwise(renewed)])
        for a, b in itertools.pairwise(renewed):  # replaced at 2/3 of its lifetime, not later, not much sooner
            assert a["iat"] + RENEW_AFTER - 2 <= b["iat"] <= a["iat"] + RENEW_AFTER + 3, (a["iat"], b["iat"])
        st = site.cache_token_file.stat()
        assert st.st_uid == pwd.getpwnam(SERVICE_USER).pw_uid and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(site.cache_token_dir.stat().st_mode) == 0o700
        assert [f.name for f in site.cache_token_dir.iterdir()] == [site.cache_token_file.name]  # no leftovers

        # 2. the hub goes away right after a renewal: the file stays as it is, misses keep working while
        #    it is valid, and the renewal succeeds once the hub is back, before the old token expires
        kept = watch.wait_new(than=renewed[-1]["jti"], timeout=RENEW_AFTER + 5)
        relay.stop()
        mark = len(renewer_log(site))
        deadline = time.monotonic() + RENEW_AFTER + 10
        while f"could not renew '{SHORT_CACHE_GRANT}'" not in renewer_log(site)[mark:]:
            assert time.monotonic() < deadline, renewer_log(site)[mark:]
            time.sleep(0.2)
        assert claims_of(site.cache_token_file)["jti"] == kept["jti"] and time.time() > kept["iat"] + RENEW_AFTER
        r, content = read_new_file(site, alice, "during-outage")
        assert r.returncode == 0 and r.stdout == content, r.stderr
        relay.start()
        back = watch.wait_new(than=kept["jti"], timeout=kept["exp"] - time.time() + 2)
        assert back["iat"] < kept["exp"], "renewed only after the old token expired"
        outage_log = renewer_log(site)[mark:]
        print("renewer while the hub was away and back:\n" + outage_log)
        assert "the current token stays in place" in outage_log and f"renewed '{SHORT_CACHE_GRANT}'" in outage_log

    assert watch.problems == [], watch.problems  # never an unreadable or expired file while the renewer ran
    for c in watch.claims:  # never longer than the grant's lifetime (and so never 6 h)
        assert c["exp"] - c["iat"] <= min(LIFETIME, 6 * 3600), c["exp"] - c["iat"]
        assert (c["sub"], c["aud"], c["scope"]) == (CACHE_SERVICE_USER, ORIGIN_AUDIENCE, "storage.read:/")
        assert c["wlcg.groups"] == [f"/{CACHE_SERVICE_GROUP}"]
    assert len(watch.seen) >= 6

    # 3. no renewer: once the token has expired the origin refuses the cache; what it holds still serves
    assert site.stop_renewer() == 0
    last = claims_of(site.cache_token_file)
    time.sleep(max(0.0, last["exp"] - time.time()) + 2)
    mark = len(site.xrootd_log("origin"))
    r, content = read_new_file(site, alice, "after-expiry")
    assert r.returncode != 0 and content not in r.stdout, "a miss succeeded with the cache's token expired"
    print(f"a miss with the cache's token expired: xrdcp {r.returncode} {r.stderr.strip()!r}")
    # the idle connection was closed: the cache logged in again with the expired file, and the origin refused
    assert "User authentication failed; token verification failed: token expired" in \
        site.xrootd_log("origin")[mark:], site.xrootd_log("origin")[mark:]
    assert r.returncode == 54 and "[3030]" in r.stderr, r.stderr  # what alice sees: the cache's login failed
    hit = site.xrdcp(CACHED_FILE, alice)
    assert hit.returncode == 0 and hit.stdout == site.files[CACHED_FILE], hit.stderr

    logs = [renewer_log(site), site.xrootd_log("origin"), site.xrootd_log("cache"),
            (xrootd_facility.log_dir / "hub.log").read_text(errors="replace")]
    for secret in (service_api_token, *watch.tokens):
        assert all(secret not in log for log in logs), "a token value appears in a log"
    assert f"jti={back['jti']}" in logs[0]  # the renewer names tokens by jti


@pytest.mark.slow(65)
def test_a_connection_never_idle_keeps_its_login_token_past_expiry(cred_site, relay, service_api_token, alice):
    """The limitation (XRootD 5.5.3): the cache's client does not log in again on an open connection, so a
    connection kept busy (never idle for DataServerTTL) is refused by the origin once the token it logged
    in with has expired, although the renewer keeps the file fresh. Some runs never reach it: the cache
    logs in again within 150 s (a connection closed) and every miss is read. Either is accepted and said;
    what must never happen is a read over a login whose token had expired without a new login."""
    site = cred_site
    stale = claims_of(site.cache_token_file)  # expired (the test above): renewed as soon as the renewer starts
    site.start_renewer(relay.api_url, service_api_token)
    deadline = time.monotonic() + 30
    while (login := claims_of(site.cache_token_file))["jti"] == stale["jti"]:
        assert time.monotonic() < deadline, "the renewer did not replace an expired token at once"
        time.sleep(0.2)
    time.sleep(IDLE_TTL + 2)  # connections the cache logged in with the stale token close (idle) before we start
    with TokenWatch(site.cache_token_file) as watch:
        mark, logins = len(site.xrootd_log("origin")), origin_logins(site)
        t0, refused_at = time.monotonic(), None
        for i in itertools.count():  # a miss every ~3 s: the cache's connections are never idle for 10 s
            r, content = read_new_file(site, alice, f"busy-{i}")
            if r.returncode != 0:
                refused_at, refused_wall = time.monotonic() - t0, time.time()
                break
            assert r.stdout == content
            if time.monotonic() - t0 > 150:
                break
            time.sleep(2)
        assert site.stop_renewer() == 0
    assert watch.problems == [], watch.problems  # the file held a valid token all along
    assert refused_at is None or refused_wall > login["exp"], \
        f"refused {login['exp'] - refused_wall:.0f} s before the login token expired: {r.stdout!r} {r.stderr}"
    assert len(watch.seen) >= 2, "the file was renewed meanwhile"
    if refused_at is None:
        # every miss was read for 150 s (several lifetimes): only safe if the cache logged in again meanwhile
        # (a connection closed and reopened with the file's fresh token), never on an expired login token
        new_logins = origin_logins(site) - logins
        print(f"misses every ~3 s: all read for {time.monotonic() - t0:.0f} s; the cache logged in again "
              f"{new_logins} times")
        assert new_logins >= 1, "no refusal and no new login: the origin kept serving a connection whose login " \
                                "token had expired"
    else:
        print(f"misses every ~3 s: first refusal after {refused_at:.0f} s, {refused_wall - login['exp']:.0f} s "
              f"after the token of the first connection expired; {len(watch.seen)} tokens in the file meanwhile")
        assert refused_wall > login["exp"], "refused before any connection's login token expired"
        assert "Failed to deserialize SciToken: token verification failed: token expired" in \
            site.xrootd_log("origin")[mark:]
        assert "permission denied" in r.stderr, r.stderr
    for secret in (service_api_token, *watch.tokens):
        assert secret not in renewer_log(site) and secret not in site.xrootd_log("origin")
