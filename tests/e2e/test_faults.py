"""Faults a facility sees, with real processes: each test causes one and asserts what users keep.

- The OIDC provider stops during a session and comes back (a real stop and start of the provider
  process; it keeps its sessions and refresh tokens in its storage file, as a production provider
  keeps them in its database).
- The hub restarts while servers run (``cleanup_servers = False``): the servers keep answering
  through the proxy and their renewal agents get new tokens from the restarted hub's broker.
- The broker is unreachable from a server (the hub is down): the agent keeps the valid token, backs
  off, and renews as soon as the hub is back.
- The issuer's key is rotated while a user's server runs: its tokens verify at a real XRootD cache
  before and after, and the agent's next token carries the new ``kid``.
- The XRootD cache restarts: reads fail with a connection error while it is down and succeed with the
  same token once it is back.

The Slurm controller restart is in tests/test_faults_slurm.py.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import jwt
import psutil
import pytest
import requests
from facilities import make_facility, running_facility
from helpers import (
    admin_api,
    http_login,
    login_and_start_server,
    read_server_environ,
    wait_for_server,
)
from xrootd_fixture import (
    CACHE_SERVICE_GROUP,
    CACHE_SERVICE_SITE,
    CACHE_SERVICE_USER,
    EXTRA_HUB_CONFIG,
    ISSUER_URL,
    Token,
    XRootDSite,
    add_provider_users,
    broker_token,
    xrootd_missing,
)

from casa_hub.demo.facility import DemoFacility, _http_status
from casa_hub.tokens.keyring import add_next, promote

pytestmark = pytest.mark.e2e

# ---- facility A: the provider's access tokens live 40 s; the hub refreshes 30 s before expiry ----

ACCESS_TTL = 40
MARGIN = 30
PROVIDER_CONFIG = f"""\
c = get_config()  # noqa: F821
c.CasaOIDCAuthenticator.auth_refresh_age = 1
c.CasaOIDCAuthenticator.refresh_margin = {MARGIN}
c.CasaOIDCAuthenticator.refresh_retry_interval = 1
"""

# ---- facility B: servers survive hub restarts; 30 s storage tokens renewed at half their life ----

LIFETIME = 30
FAULTS_HUB_CONFIG = f"""\
c = get_config()  # noqa: F821
c.JupyterHub.cleanup_servers = False
c.CasaTokenIssuer.grants.update({{"xcache": {{
    "audience": "casa-demo-xcache", "scopes": ["storage.read:/user/{{username}}"],
    "lifetime": {LIFETIME}, "groups": ["physicists"],
}}}})
c.Spawner.args.extend([  # the renewal agent in the notebook: look every second, retry after 1 s, 2 s, 2 s...
    "--CasaTokenRenewal.renew_fraction=0.5", "--CasaTokenRenewal.rescan_interval=1",
    "--CasaTokenRenewal.retry_initial=1", "--CasaTokenRenewal.retry_max=2", "--CasaTokenRenewal.retry_jitter=0",
])
"""
ALICE_FILE = "/store/user/alice/events.txt"


@pytest.fixture(scope="module")
def idp_fac(tmp_path_factory, admin_token):
    with running_facility(tmp_path_factory, "provider-fault", admin_token, PROVIDER_CONFIG,
                          idp_overrides={"access_token_ttl": ACCESS_TTL}) as fac:
        yield fac


@pytest.fixture(scope="module")
def hub_fac(tmp_path_factory, admin_token):
    """Issuer https://localhost/hub/casa-issuer, so that a real XRootD (``site``) can trust it."""
    # EXTRA_HUB_CONFIG: the cache's own grants; keys re-read every 0.5 s. The cache reads the origin with a
    # token of its service account, which signs in like the xrootd facility's (CACHE_SERVICE_SITE)
    fac = make_facility(tmp_path_factory.mktemp("hub-fault") / "facility", admin_token, name="hub-fault",
                        hub_configs=[EXTRA_HUB_CONFIG, FAULTS_HUB_CONFIG], issuer_url_override=ISSUER_URL,
                        site=CACHE_SERVICE_SITE)
    fac.prepare()
    add_provider_users(fac, {CACHE_SERVICE_USER: [CACHE_SERVICE_GROUP]})
    with fac:
        yield fac


@pytest.fixture(scope="module")
def site(hub_fac):
    """A real XRootD origin and XCache of our own (own network namespace) trusting hub_fac's issuer."""
    reason = xrootd_missing()
    if reason:
        pytest.fail(f"the real XRootD tests cannot run: {reason}")
    run_dir = Path(tempfile.mkdtemp(prefix="casa-faults-xrootd-"))
    run_dir.chmod(0o755)
    s = XRootDSite(hub_fac, run_dir)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def alice(hub_fac, admin_token):
    """alice signed in with a running server (renewal agent on) and an API token to reach it."""
    model = login_and_start_server(hub_fac.hub_url, admin_token, "alice", hub_fac.password("alice"))
    pid = model["servers"][""]["state"]["pid"]
    env = read_server_environ(pid)
    r = admin_api(hub_fac.hub_url, admin_token, "/users/alice/tokens", method="POST",
                  json={"scopes": ["access:servers!user=alice"], "note": "faults: reach alice's server"})
    assert r.status_code == 201, r.text
    yield {"pid": pid, "create_time": psutil.Process(pid).create_time(), "env": env,
           "token_file": Path(env["BEARER_TOKEN_FILE"]), "access": r.json()["token"]}
    # the hub leaves servers running when it stops (cleanup_servers = False): stop hers now
    admin_api(hub_fac.hub_url, admin_token, "/users/alice/server", method="DELETE")
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=30)


# ---- helpers ----------------------------------------------------------------------------------------


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


def hub_log(fac: DemoFacility, since: int = 0) -> str:
    return (fac.log_dir / "hub.log").read_bytes()[since:].decode(errors="replace")


def log_size(fac: DemoFacility) -> int:
    return (fac.log_dir / "hub.log").stat().st_size


def auth_state(fac: DemoFacility, admin_token: str, name: str) -> dict:
    r = admin_api(fac.hub_url, admin_token, f"/users/{name}")
    assert r.status_code == 200, r.text
    return r.json()["auth_state"]


def metric(fac: DemoFacility, admin_token: str, name: str, **labels: str) -> float:
    text = admin_api(fac.hub_url, admin_token, "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def published(fac: DemoFacility) -> dict[str, dict]:
    return {k["kid"]: k for k in requests.get(f"{fac.hub_url}/hub/casa-issuer/jwks.json", timeout=10).json()["keys"]}


def verify(fac: DemoFacility, token: str, issuer: str, audience: str = "casa-demo-xcache") -> dict:
    """Verify against the JWKS the hub publishes now."""
    key = published(fac)[kid(token)]
    return jwt.decode(token, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience=audience, issuer=issuer)


def server_status(fac: DemoFacility, access_token: str, user: str = "alice") -> requests.Response:
    """The notebook server's own API, through the hub's proxy."""
    return requests.get(f"{fac.hub_url}/user/{user}/api/status",
                        headers={"Authorization": f"token {access_token}"}, timeout=30)


def renewed_jtis(text: str, path: Path) -> list[str]:
    """jtis of the agent's renewals of ``path`` logged in ``text`` (the notebook logs to the hub log)."""
    return re.findall(rf"renewed 'xcache' in {re.escape(str(path))} \(jti=([\w-]+)", text)


def assert_agent_renewing(fac: DemoFacility, path: Path) -> None:
    """Fail at once, saying why, if the agent gave up on ``path`` (the hub refused a renewal)."""
    text = hub_log(fac)
    if f"no longer renewing {path}" in text:
        refused = re.findall(r"the hub refused to renew grant 'xcache' \((.*?)\); no longer", text)
        hub_errors = re.findall(r"^\s*(\w+Error: .*)$", text, re.M)
        raise AssertionError(f"the agent in alice's server stopped renewing: the hub refused ({refused[-1:]}); "
                             f"hub errors: {hub_errors[-1:]}")


def agent_renewal(fac: DemoFacility, path: Path, since: int, what: str, new_kid: str | None = None) -> str:
    """Wait until ``path`` holds a token the agent logged as renewed after byte ``since`` of the hub
    log (the hub itself may also write a re-minted token into the file before the broker answers)."""

    def renewed() -> str | None:
        assert_agent_renewing(fac, path)
        token = path.read_text()
        if claims(token)["jti"] in renewed_jtis(hub_log(fac, since), path) and new_kid in (None, kid(token)):
            return token
        return None

    return wait_until(renewed, LIFETIME + 15, what)


# ---- 1. the OIDC provider stops during a session ------------------------------------------------------


@pytest.mark.slow(20)
def test_provider_outage_keeps_sessions_and_refresh_resumes_when_it_returns(idp_fac, admin_token):
    fac, hub = idp_fac, idp_fac.hub_url
    server = login_and_start_server(hub, admin_token, "alice", fac.password("alice"))
    env = read_server_environ(server["servers"][""]["state"]["pid"])
    s, r = http_login(hub, "alice", fac.password("alice"))  # alice's browser
    assert r.status_code == 200
    bob, r = http_login(hub, "bob", fac.password("bob"))  # signed in, no server yet
    assert r.status_code == 200
    before = auth_state(fac, admin_token, "alice")
    assert before["casa_oidc"]["generation"] == 0
    unavailable = metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count",
                         outcome="provider_unavailable")
    refreshed = metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count", outcome="ok")
    old_idp = fac.procs["idp"].pid

    fac.stop_process("idp")
    assert _http_status(f"{fac.idp_url}/healthz") is None, "the provider must be down"
    due = before["casa_oidc"]["access_expires_at"] - MARGIN
    time.sleep(max(0.0, due - time.time()) + 0.5)  # the hub now wants to refresh alice, and cannot

    # what must keep working while the provider is down and the access token is valid:
    assert s.get(f"{hub}/hub/home", allow_redirects=False, timeout=30).status_code == 200, "hub pages"
    r = requests.post(f"{env['JUPYTERHUB_API_URL']}/casa/tokens/xcache", timeout=30,
                      headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"})
    assert r.status_code == 200, f"the running server's broker call failed: {r.status_code} {r.text[:200]}"
    assert verify(fac, r.json()["token"], fac.issuer_url)["sub"] == "alice"
    r = bob.post(f"{hub}/hub/api/users/bob/server", headers={"X-XSRFToken": bob.cookies.get("_xsrf", "")},
                 timeout=60)
    assert r.status_code in (201, 202), f"a new server must start while the provider is down: {r.text[:300]}"
    bob_server = wait_for_server(hub, admin_token, "bob")["servers"][""]
    bob_token = Path(read_server_environ(bob_server["state"]["pid"])["BEARER_TOKEN_FILE"]).read_text()
    assert verify(fac, bob_token, fac.issuer_url)["sub"] == "bob", "the new server got its facility tokens"
    # ... and the hub tried to refresh, kept the session, and will retry
    assert "refresh is retried" in hub_log(fac)
    assert metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count",
                  outcome="provider_unavailable") > unavailable
    during = auth_state(fac, admin_token, "alice")
    assert during["casa_oidc"]["generation"] == 0 and not during["casa_oidc"].get("login_required")
    assert during["refresh_token"] == before["refresh_token"], "the refresh token is kept for later"

    fac.start_idp()  # the same provider again: same port, keys and storage
    assert fac.procs["idp"].pid != old_idp
    wait_until(lambda: s.get(f"{hub}/hub/home", allow_redirects=False, timeout=30).status_code == 200
               and auth_state(fac, admin_token, "alice")["casa_oidc"]["generation"] == 1,
               30, "the hub to refresh alice's tokens with the returned provider")
    after = auth_state(fac, admin_token, "alice")
    assert not after["casa_oidc"].get("login_required"), "alice never had to sign in again"
    assert after["refresh_token"] != before["refresh_token"], "the provider honoured and rotated her refresh token"
    assert after["casa_oidc"]["access_expires_at"] > before["casa_oidc"]["access_expires_at"]
    assert after["casa_tokens"]["xcache"]["jti"] != before["casa_tokens"]["xcache"]["jti"], "facility tokens re-minted"
    token_file = Path(env["BEARER_TOKEN_FILE"])
    assert token_file.read_text() == after["casa_tokens"]["xcache"]["token"], "the running server got them"
    assert metric(fac, admin_token, "casa_hub_oidc_refresh_duration_seconds_count", outcome="ok") > refreshed
    log = hub_log(fac)
    assert "Refreshed alice's provider tokens (generation 1)" in log
    assert before["refresh_token"] not in log and after["refresh_token"] not in log


# ---- 2. the hub restarts with servers running -----------------------------------------------------------


@pytest.mark.slow(15)
def test_hub_restart_keeps_servers_running_and_tokens_renewing(hub_fac, admin_token, alice):
    fac = hub_fac
    assert server_status(fac, alice["access"]).status_code == 200
    old_hub = fac.procs["hub"].pid
    since = log_size(fac)

    fac.restart_hub()

    assert fac.procs["hub"].pid != old_hub, "a new hub process"
    server = psutil.Process(alice["pid"])
    assert server.is_running() and server.create_time() == alice["create_time"], "the same server process"
    r = server_status(fac, alice["access"])
    assert r.status_code == 200 and "last_activity" in r.json(), "the server answers through the new proxy"
    model = admin_api(fac.hub_url, admin_token, "/users/alice").json()
    assert model["servers"][""]["ready"] and model["servers"][""]["state"]["pid"] == alice["pid"], \
        "the restarted hub resumed the server from its stored state"
    assert "Leaving single-user servers running" in hub_log(fac, since)

    # the agent in the server obtains its next token from the restarted hub's broker
    path = alice["token_file"]
    token = agent_renewal(fac, path, since, "the agent to renew alice's token after the restart")
    jti = verify(fac, token, ISSUER_URL)["jti"]
    assert f"mint user=alice grant=xcache jti={jti}" in hub_log(fac, since), "minted by the restarted hub"


# ---- 3. the broker is unreachable from a server ---------------------------------------------------------


@pytest.mark.slow(20)
def test_unreachable_broker_keeps_the_valid_token_and_the_agent_recovers(hub_fac, alice):
    fac, path = hub_fac, alice["token_file"]
    assert_agent_renewing(fac, path)
    current = path.read_bytes()
    times = claims(current.decode())
    since = log_size(fac)

    fac.stop_process("hub")  # the server's JUPYTERHUB_API_URL no longer answers
    try:
        failures = wait_until(
            lambda: re.findall(r"could not renew 'xcache': ([^;]*); the current token stays in place, "
                               r"valid for \d+ s more; retry (\d+) in ([\d.]+) s", hub_log(fac, since))[:2]
            if len(re.findall(r"could not renew 'xcache'", hub_log(fac, since))) >= 2 else None,
            LIFETIME + 15, "the agent to fail twice to reach the broker")
        assert path.read_bytes() == current, "the valid token is kept byte for byte"
        assert time.time() < times["exp"], "the kept token is still valid"
        assert all("cannot reach the hub" in reason for reason, _, _ in failures), failures
        assert [(int(n), float(d)) for _, n, d in failures] == [(1, 1.0), (2, 2.0)], "exponential backoff"
        assert psutil.Process(alice["pid"]).is_running(), "the server itself is unaffected"
    finally:
        fac.start_hub()

    # the agent's next retry reaches the returned hub (the hub may also re-mint into the file first)
    new = agent_renewal(fac, path, since, "the agent to renew the token once the hub is back")
    new_claims = verify(fac, new, ISSUER_URL)
    assert new_claims["jti"] != times["jti"] and new_claims["exp"] > times["exp"]


# ---- 4. key rotation mid-session --------------------------------------------------------------------------


@pytest.mark.slow(20)
def test_key_rotation_mid_session_tokens_keep_verifying_at_xrootd(hub_fac, site, alice):
    fac, path = hub_fac, alice["token_file"]
    keydir = fac.state_dir / "issuer-keys"
    assert_agent_renewing(fac, path)
    before = Token(path.read_text())
    old_kid = kid(before)
    r = site.xrdcp(ALICE_FILE, before)
    assert r.returncode == 0 and r.stdout == site.files[ALICE_FILE], f"before the rotation: {r.stderr}"

    new = add_next(keydir)
    wait_until(lambda: new.kid in published(fac), 30, "the next key to be published")
    # XRootD refreshes its copy of the JWKS (every 10 minutes; here at once) and learns the next key
    site.refresh_issuer_keys()
    assert site.xrdcp(ALICE_FILE, broker_token(fac, "alice", "xcache")).returncode == 0
    assert {k["kid"] for k in site.cached_jwks()["cache"]["keys"]} == {old_kid, new.kid}
    old_key_unseen = broker_token(fac, "alice", "xcache")  # signed with the old key, not yet shown to XRootD
    assert kid(old_key_unseen) == old_kid

    since = log_size(fac)
    promote(keydir, min_published=0)  # XRootD has the next key already: it may sign now
    # the agent's next renewal in alice's server writes a token signed with the new key
    after = agent_renewal(fac, path, since, "the agent in alice's server to renew her token with the new key",
                          new_kid=new.kid)
    jwks_before = site.cached_jwks()
    for what, token in (("the server's new-key token", after), ("an old-key token", old_key_unseen)):
        r = site.xrdcp(ALICE_FILE, Token(token))
        assert r.returncode == 0 and r.stdout == site.files[ALICE_FILE], f"{what} after the rotation: {r.stderr}"
    assert site.cached_jwks() == jwks_before, "no key refresh was needed after the rotation"
    assert set(published(fac)) == {old_kid, new.kid}, "the retired key stays published while its tokens live"


# ---- 5. the XRootD cache restarts -------------------------------------------------------------------------


def test_xrootd_cache_restart_fails_reads_clearly_then_serves_the_same_token(hub_fac, site):
    token = broker_token(hub_fac, "alice", "xcache")  # valid for 30 s
    content = site.files[ALICE_FILE]
    assert site.xrdcp(ALICE_FILE, token).stdout == content
    assert site.https_get(ALICE_FILE, token).status == 200

    site.stop_server("cache")
    try:
        r = site.xrdcp(ALICE_FILE, token)
        assert r.returncode != 0 and r.stdout == b"", "a read must fail while the cache is down"
        assert "Connection refused" in r.stderr or "Connection error" in r.stderr, \
            f"the client must say it cannot connect: {r.stderr[-300:]}"
        h = site.https_get(ALICE_FILE, token)
        assert h.status in (None, 0) and h.returncode == 7 and h.stdout == b"", (h.returncode, h.stderr[-200:])
        assert "Failed to connect" in h.stderr or "Couldn't connect" in h.stderr, h.stderr[-200:]
    finally:
        site.start_server("cache")

    r = site.xrdcp(ALICE_FILE, token)
    assert r.returncode == 0 and r.stdout == content, f"the same token must read after the restart: {r.stderr}"
    assert site.https_get(ALICE_FILE, token).status == 200
    assert time.time() < claims(token)["exp"]
