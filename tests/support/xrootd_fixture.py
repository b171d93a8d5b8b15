"""A real XRootD origin and XCache that verify facility tokens themselves, for the end-to-end tests.

``xrootd_facility`` is a second demo facility whose issuer URL is ``https://localhost/hub/casa-issuer``
(XRootD trusts https issuers only). ``xrootd_site`` then starts, inside a loopback-only network
namespace (xrootd binds every interface):

- a TLS forwarder on ``localhost:443`` (certificate from a test CA) that reaches the hub, which runs in
  the root namespace, through a unix socket bridge: the SciTokens plugin fetches the hub's REAL
  discovery document and JWKS over https;
- an XRootD origin exporting ``/store`` (``/store/user/<name>/events.txt`` of alice, bob, bobby and ali:
  names that are prefixes of each other), and an XCache in front of it, both over root:// and https.
  Both are configured by ``casa-hub site-config xrootd`` from the hub's own config file: by default
  with ``--prefix-safe`` (the files it writes, included with ``continue``; the users above are listed);
  ``XRootDSite(mode="scope")`` runs the plain ``scitokens.cfg`` instead (generated with
  ``--allow-prefix-reads``: on XRootD < 5.6.9 bob reads bobby's files there).

The plugin (scitokens-cpp 0.7) trusts only the system CA bundle and has no CA-file setting. Each xrootd
therefore runs in a private mount namespace in which the test CA is bind-mounted over
``/etc/ssl/certs/ca-certificates.crt``; the machine's trust store is never modified.

Refreshing the keys XRootD sees (e.g. after a key rotation in the hub's key directory): scitokens-cpp
keeps each server's copy of the JWKS in an sqlite cache (``$XDG_CACHE_HOME/scitokens``) and refetches
it only 10 minutes later, even for an unknown ``kid``. ``XRootDSite.refresh_issuer_keys()`` drops the
cached entry, so the next token XRootD has not seen makes each server fetch the hub's current
discovery and JWKS again over https; a token validated in the last 60 s is answered from the plugin's
own cache, so use a fresh one. ``XRootDSite.cached_jwks()`` shows what each server holds. A token
signed by a key the hub no longer publishes is then refused with "Key ID is not published by the
issuer" (xrdcp exit code 52, https 403).

The cache's own token for the origin (README, "The cache's own credential") is a token of the hub account
``xcache-svc``, the only member of ``xcache-service``, in ``BEARER_TOKEN_FILE`` = ``cache/tokens/<grant>.token``
(grant ``xcache-origin``, 6 h; ``XRootDSite(cache_grant=SHORT_CACHE_GRANT)``: 40 s). It is minted at start
through a login of the account, or, with ``cache_api_token`` (the account's API token, renew scope only), by
``casa-hub renew-tokens --once`` into an empty file. ``start_renewer``/``stop_renewer`` run
``casa-hub renew-tokens`` beside the cache as the servers' user, so that the files it writes are the cache's
(if this Python lives below a directory that user cannot enter, e.g. a pyenv in /root, the renewer runs in a
private mount namespace where an empty directory replaces it, holding only the way to the Python);
``HubRelay`` is a way to the hub that a test can cut.

xrootd refuses to run as root: the servers run as the system user ``casa-xrootd`` (created with
useradd if missing; it is kept, it owns no files after teardown). Teardown stops every process it
started (renewer included), by PID, deletes the namespace and removes the run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from facilities import make_facility
from helpers import http_login

from casa_hub.common.files import token_file_name, write_private
from casa_hub.demo.data_cache import CACHE_AUDIENCE, data_cache_missing
from casa_hub.demo.facility import HUB_CONFIG, DemoFacility
from casa_hub.demo.tls import hashed_ca_dir, make_test_ca
from casa_hub.demo.xrootd_servers import (
    SERVICE_USER,
    XRootDServers,
    XRootDStartError,
    ensure_service_user,
    make_world_readable,
)

ISSUER_URL = "https://localhost/hub/casa-issuer"
ORIGIN_AUDIENCE = "casa-demo-origin"  # the cache's own grant for the origin (below)
ORIGIN_PORT, CACHE_PORT, CACHE_HTTPS_PORT, ORIGIN_HTTPS_PORT = 1094, 1095, 8443, 8444  # inside the namespace
#: the owners of /store/user/<name>/events.txt: names that are prefixes of each other (bob/bobby, ali/alice)
DATA_OWNERS = ("alice", "bob", "bobby", "ali")

# The cache reaches the origin with its own token (README, "The cache's own credential"): the hub account
# xcache-svc, the only member of the group xcache-service, receives the grant xcache-origin (6 h) and, for
# tests/site/test_cache_credential.py, xcache-origin-short (40 s, renewed by `casa-hub renew-tokens`).
CACHE_SERVICE_USER = "xcache-svc"
CACHE_SERVICE_GROUP = "xcache-service"
CACHE_GRANT, SHORT_CACHE_GRANT, SHORT_CACHE_LIFETIME = "xcache-origin", "xcache-origin-short", 40
EXTRA_HUB_CONFIG = f"""\
c = get_config()  # noqa: F821
c.CasaTokenIssuer.grants.update({{
    "{CACHE_GRANT}": {{"audience": "{ORIGIN_AUDIENCE}", "scopes": ["storage.read:/"],
                       "lifetime": 6 * 3600, "groups": ["{CACHE_SERVICE_GROUP}"]}},
    "{SHORT_CACHE_GRANT}": {{"audience": "{ORIGIN_AUDIENCE}", "scopes": ["storage.read:/"],
                             "lifetime": {SHORT_CACHE_LIFETIME}, "groups": ["{CACHE_SERVICE_GROUP}"]}},
}})
c.CasaTokenIssuer.key_reload_interval = 0.5  # key rotation test: follow the key directory at once
"""
# xrootd_facility only: users whose names extend alice's and bob's, the cache's service account, a facility
# admin (in prefix-safe mode an admin reads all of /store with any token of the audience, see README), and
# a per-user grant for the origin's audience (users reading the origin directly, so that it is tested as
# the cache is)
PREFIX_USERS = ("bobby", "ali")
ADMIN_USER = "opsadmin"
#: the physicists' cache grant with a short lifetime, for the workers' token renewal (test_worker_renewal_site)
SHORT_USER_GRANT, SHORT_USER_LIFETIME = "xcache-short", 40
USERS_HUB_CONFIG = f"""\
c = get_config()  # noqa: F821
c.CasaTokenIssuer.grants.update({{
    "origin-user": {{"audience": "{ORIGIN_AUDIENCE}", "scopes": ["storage.read:/user/{{username}}"],
                    "groups": ["physicists"]}},
    "{SHORT_USER_GRANT}": {{"audience": "{CACHE_AUDIENCE}", "scopes": ["storage.read:/user/{{username}}"],
                    "lifetime": {SHORT_USER_LIFETIME}, "groups": ["physicists"]}},
}})
"""


class XRootDSetupError(XRootDStartError):
    """The XRootD test site could not be started; the message says what failed."""


def _closed_directory(path: Path) -> tuple[Path, Path] | None:
    """The first directory on the way to ``path`` that other users cannot enter, and its child on that way."""
    for d, child in itertools.pairwise([*reversed(path.parents), path]):
        if not d.stat().st_mode & 0o001:
            return d, child
    return None


class HubRelay:
    """A TCP relay 127.0.0.1:<port> -> the hub, in this process. ``stop()`` makes the hub unreachable through
    it (connection refused) without touching the hub; ``start()`` listens on the same port again."""

    def __init__(self, hub_port: int) -> None:
        self.hub_port = hub_port
        self.port = 0
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"

    def start(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        """Stop listening and cut the open connections: the port refuses connections until ``start()``."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.hub_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side is done: end both directions, then close the side this thread read
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
            src.close()


def xrootd_missing() -> str | None:
    """Why the real XRootD tests cannot run here, or None."""
    reason = data_cache_missing()
    if reason:
        return reason
    for tool in ("xrdcp", "curl", "useradd"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/install.sh test installs it)"
    return None


class Token(str):
    """A token whose repr never shows its value (pytest prints the reprs of arguments on failure)."""

    def __repr__(self) -> str:
        return f"<token of {len(self)} characters>"


def broker_token(facility: DemoFacility, username: str, grant: str) -> Token:
    """A fresh token from the real broker, for ``username`` signed in over HTTP."""
    session, r = http_login(facility.hub_url, username, facility.password(username))
    assert r.status_code == 200, f"login of {username} failed: {r.status_code}"
    r = session.post(f"{facility.hub_url}/hub/api/casa/tokens/{grant}",
                     headers={"X-XSRFToken": session.cookies.get("_xsrf", "")}, timeout=30)
    assert r.status_code == 200, f"broker refused {username}/{grant}: {r.status_code} {r.text[:200]}"
    return Token(r.json()["token"])


# ---- the site ---------------------------------------------------------------------------------------


@dataclass
class ClientResult:
    """What a client run inside the namespace returned (never the token it used)."""

    returncode: int
    stdout: bytes
    stderr: str
    status: int | None = None  # https only


@dataclass(repr=False)
class XRootDSite(XRootDServers):
    """The running origin and cache; see the module docstring."""

    start_error = XRootDSetupError

    facility: DemoFacility
    run_dir: Path
    netns: str = field(default_factory=lambda: f"casa-xrd-{secrets.token_hex(4)}")
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    startup_seconds: float = 0.0
    mode: str = "prefix-safe"  # or "scope": the plain scitokens.cfg (see the module docstring)
    cache_token_user: str = CACHE_SERVICE_USER  # the hub account whose token the cache uses for the origin
    cache_grant: str = CACHE_GRANT  # ... of this grant, in cache_token_file
    #: the account's API token (renew scope only): the cache's first token is then written by
    #: `casa-hub renew-tokens --once` into an empty file, as README "The cache's own credential" says;
    #: None: by a login of cache_token_user and the broker
    cache_api_token: str | None = None
    #: more lines for the cache's xrootd.cfg (e.g. ``pss.setopt DataServerTTL 10``)
    cache_extra_config: tuple[str, ...] = ()

    def __repr__(self) -> str:  # short, and without the facility's secrets
        return f"XRootDSite(netns={self.netns!r}, run_dir={str(self.run_dir)!r})"

    # -- paths
    def casa_dir(self, name: str) -> Path:
        """Where ``site-config xrootd --prefix-safe`` writes the server's files."""
        return self.server_dir(name) / "casa"

    @property
    def scitokens_cfgs(self) -> dict[str, Path]:
        if self.mode == "prefix-safe":
            return {name: self.casa_dir(name) / "scitokens.cfg" for name in ("origin", "cache")}
        return {name: self.server_dir(name) / "scitokens.cfg" for name in ("origin", "cache")}

    def key_cache(self, name: str) -> Path:
        return self.server_dir(name) / "xdg-cache" / "scitokens" / "scitokens_cpp.sqllite"

    @property
    def cache_token_dir(self) -> Path:
        """The cache's token directory (0700, the service user's): ``$CASA_TOKEN_DIR`` of its renewer."""
        return self.server_dir("cache") / "tokens"

    @property
    def cache_token_file(self) -> Path:
        """The cache's ``BEARER_TOKEN_FILE``: ``<cache_token_dir>/<cache_grant>.token``."""
        return self.cache_token_dir / token_file_name(self.cache_grant)

    # -- lifecycle
    def start(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        user = ensure_service_user()
        self.log_dir.mkdir(parents=True)
        tls = self.run_dir / "tls"
        tls.mkdir()
        self.ca_pem, cert, key = make_test_ca(tls)
        self.ca_dir = hashed_ca_dir(self.ca_pem, self.run_dir / "ca-dir")
        # the servers' copy of the key, readable by the service user only
        self.xrd_key = tls / "xrootd.key"
        shutil.copy(key, self.xrd_key)
        os.chown(self.xrd_key, user.pw_uid, user.pw_gid)
        os.chmod(self.xrd_key, 0o400)
        self.cert = cert
        self._make_data(user)
        self._write_configs(user)
        self._create_netns()

        sock = self.run_dir / "hub.sock"
        self._start_relay("bridge", ["unix-to-tcp", "--unix", str(sock), "--tcp",
                                     f"127.0.0.1:{self.facility.hub_port}"], timeout)
        self._start_relay("forwarder", ["tls-to-unix", "--unix", str(sock), "--port", "443", "--cert", str(cert),
                                        "--key", str(key)], timeout, in_netns=True)
        for name in ("origin", "cache"):
            self._spawn_xrootd(name)
        for name in ("origin", "cache"):
            self._wait_xrootd(name, timeout)
        self.startup_seconds = time.monotonic() - t0

    def stop_server(self, name: str) -> None:
        """Stop one xrootd ("origin" or "cache") by PID, as a crash or an operator would."""
        self.stop_process(name)

    def start_server(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped xrootd again with the same configuration, data and key cache."""
        log = self.xrootd_log_path(name)
        since = log.stat().st_size if log.exists() else 0
        self._spawn_xrootd(name)
        self._wait_xrootd(name, timeout, since)

    def restart_server(self, name: str, timeout: float = 60.0) -> None:
        self.stop_server(name)
        self.start_server(name, timeout)

    def stop(self) -> None:
        """Stop every process this site started (by PID), delete the namespace and the run directory."""
        for name in ("renewer", "cache", "origin", "forwarder", "bridge"):
            self.stop_process(name)
        self.stop_all()

    # -- setup helpers
    def _make_data(self, user: pwd.struct_passwd) -> None:
        data = self.server_dir("origin") / "data"
        for owner in DATA_OWNERS:
            d = data / "store" / "user" / owner
            d.mkdir(parents=True)
            content = f"{owner}'s event data {secrets.token_hex(16)}\n".encode()
            (d / "events.txt").write_bytes(content)
            self.files[f"/store/user/{owner}/events.txt"] = content
        make_world_readable(data)

    def _write_configs(self, user: pwd.struct_passwd) -> None:
        common = [
            f"xrd.tls {self.cert} {self.xrd_key}",
            f"xrd.tlsca certdir {self.ca_dir}",
            "xrootd.tls capable all",
            "xrootd.seclib libXrdSec.so",
            "sec.protocol ztn",
            "ofs.authorize 1",
        ]
        origin = [
            f"xrd.port {ORIGIN_PORT}",
            f"xrd.protocol XrdHttp:{ORIGIN_HTTPS_PORT} libXrdHttp.so",
            "http.header2cgi Authorization authz",
            "all.export /store",
            f"oss.localroot {self.server_dir('origin') / 'data'}",
        ]
        cache = [
            f"xrd.port {CACHE_PORT}",
            f"xrd.protocol XrdHttp:{CACHE_HTTPS_PORT} libXrdHttp.so",
            "http.header2cgi Authorization authz",
            "all.export /store",
            "ofs.osslib libXrdPss.so",
            "pss.cachelib libXrdPfc.so",
            f"pss.origin localhost:{ORIGIN_PORT}",
            f"oss.localroot {self.server_dir('cache') / 'data'}",
            "pfc.ram 1g",
            *self.cache_extra_config,
        ]
        for name, lines, audience in (("origin", origin, ORIGIN_AUDIENCE), ("cache", cache, CACHE_AUDIENCE)):
            d = self.server_dir(name)
            for sub in ("data", "admin", "xdg-cache", "log"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            if self.mode == "prefix-safe":
                self.generate_prefix_safe(audience, self.casa_dir(name))
                authz = [f"continue {self.casa_dir(name) / 'xrootd-casa.cfg'}"]
            else:
                self.scitokens_cfgs[name].write_text(self.generate_scitokens_cfg(audience))
                authz = [f"ofs.authlib libXrdAccSciTokens.so config={self.scitokens_cfgs[name]}"]
            cfg = [*lines, *common, f"all.adminpath {d / 'admin'}", f"all.pidpath {d / 'admin'}", *authz]
            (d / "xrootd.cfg").write_text("\n".join(cfg) + "\n")
            for sub in ("admin", "xdg-cache", "log"):
                os.chown(d / sub, user.pw_uid, user.pw_gid)
            if name == "cache":
                os.chown(d / "data", user.pw_uid, user.pw_gid)
        # the cache's own token for the origin, in a 0700 directory of the service user
        self.cache_token_dir.mkdir(mode=0o700)
        os.chown(self.cache_token_dir, user.pw_uid, user.pw_gid)
        # from the broker, for the service account signed in; or empty: the renewer fills it at once
        self._write_cache_token("" if self.cache_api_token is not None else self._broker_cache_token())
        if self.cache_api_token is not None:
            r = self.run_renewer(f"{self.facility.hub_url}/hub/api", self.cache_api_token, "--once")
            if r.returncode != 0:
                raise XRootDSetupError(f"casa-hub renew-tokens --once failed ({r.returncode}): {r.stdout} "
                                       f"{self.log_tail('renewer')}")
        # the trust bundle the xrootd processes see instead of the system one: the test CA only
        shutil.copy(self.ca_pem, self.trust_bundle)
        casa = [p for n in ("origin", "cache") if self.casa_dir(n).exists()
                for p in (self.casa_dir(n), *self.casa_dir(n).iterdir())]
        for p in (self.run_dir, self.run_dir / "tls", self.ca_dir, *self.ca_dir.iterdir(), self.cert,
                  self.trust_bundle, *self.scitokens_cfgs.values(), *casa):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)

    def renew_cache_token(self) -> None:
        """Replace the cache's token for the origin with a fresh one from the broker (signed with the hub's
        current key) and restart the cache: the origin checks the token a connection logged in with at every
        open, so connections of the old token would be refused once its key is no longer published."""
        self._write_cache_token(self._broker_cache_token())
        self.restart_server("cache")

    def _broker_cache_token(self) -> str:
        return broker_token(self.facility, self.cache_token_user, self.cache_grant)

    def _write_cache_token(self, token: str) -> None:
        """The cache's token file: 0600, owned by the user the servers run as."""
        user = pwd.getpwnam(SERVICE_USER)
        write_private(self.cache_token_file, token)
        os.chown(self.cache_token_file, user.pw_uid, user.pw_gid)

    def site_config(self, *args: str) -> subprocess.CompletedProcess:
        """``casa-hub site-config xrootd ARGS`` on the facility's hub config file, as an admin would run it."""
        env = dict(os.environ, **self.facility.config_env())
        return subprocess.run([sys.executable, "-m", "casa_hub.cli", "site-config", "xrootd", "-f", str(HUB_CONFIG),
                               *args], env=env, capture_output=True, text=True, timeout=60)

    def generate_scitokens_cfg(self, audience: str) -> str:
        """The plain scitokens.cfg (scope mode); on XRootD < 5.6.9 only with --allow-prefix-reads."""
        r = self.site_config("--audience", audience, "--base-path", "/store", "--allow-prefix-reads")
        if r.returncode != 0:
            raise XRootDSetupError(f"casa-hub site-config xrootd failed: {r.stderr.strip()}")
        return r.stdout

    def generate_prefix_safe(self, audience: str, out: Path) -> None:
        """``site-config xrootd --prefix-safe`` for the data owners, writing its files to ``out``."""
        users = [a for owner in DATA_OWNERS for a in ("--user", owner)]
        r = self.site_config("--audience", audience, "--base-path", "/store", "--prefix-safe", *users,
                             "--output-dir", str(out))
        if r.returncode != 0:
            raise XRootDSetupError(f"casa-hub site-config xrootd --prefix-safe failed: {r.stderr.strip()}")

    def _spawn_xrootd(self, name: str, env: dict[str, str] | None = None, mounts: tuple = ()) -> None:
        # the cache reads its misses from the origin with its own token
        own = {"BEARER_TOKEN_FILE": str(self.cache_token_file)} if name == "cache" else {}
        super()._spawn_xrootd(name, env={**own, **(env or {})}, mounts=mounts)

    # -- the cache's renewer: `casa-hub renew-tokens` as the service user, beside the cache
    def renewer_command(self, *args: str) -> list[str]:
        """``casa-hub renew-tokens --token-dir <cache_token_dir> ARGS`` as the user the servers run as (as
        a systemd unit with ``User=`` would run it): the files it writes are the cache's."""
        user = pwd.getpwnam(SERVICE_USER)
        cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
               sys.executable, "-m", "casa_hub.cli", "renew-tokens", "--token-dir", str(self.cache_token_dir), *args]
        closed = _closed_directory(Path(sys.base_prefix).resolve())
        if closed is None:
            return cmd
        # this Python lives below a directory the service user cannot enter (a pyenv in /root): in a private
        # mount namespace, an empty directory replaces it, with only the way to the Python bound back in
        blocked, child = closed
        stage = Path(tempfile.mkdtemp(prefix="python-", dir=self.run_dir))
        script = ('mount --bind "$1" "$2" && mount -t tmpfs -o mode=0755 casa-python "$3" && mkdir "$1" && '
                  'mount --move "$2" "$1" && shift 3 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(child), str(stage), str(blocked), *cmd]

    def _renewer_env(self, api_url: str, api_token: str) -> dict[str, str]:
        # the hub credential only in the environment (never argv), as the command requires
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.cache_token_dir),
                "PYTHONDONTWRITEBYTECODE": "1", "JUPYTERHUB_API_URL": api_url, "JUPYTERHUB_API_TOKEN": api_token}

    def run_renewer(self, api_url: str, api_token: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``casa-hub renew-tokens ARGS`` (e.g. ``--once``) to completion; stderr goes to logs/renewer.log."""
        with open(self.log_dir / "renewer.log", "ab") as log:
            return subprocess.run(self.renewer_command(*args), env=self._renewer_env(api_url, api_token),
                                  stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                                  timeout=timeout)

    def start_renewer(self, api_url: str, api_token: str, *args: str) -> subprocess.Popen:
        """``casa-hub renew-tokens ARGS`` in the background (stopped by ``stop_renewer`` or ``stop``)."""
        return self._spawn("renewer", self.renewer_command(*args), env=self._renewer_env(api_url, api_token))

    def stop_renewer(self) -> int:
        """SIGTERM to the running renewer (by PID); its exit code."""
        proc = self.procs.pop("renewer")
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    # -- data
    def add_file(self, path: str, content: bytes) -> None:
        """A new file at the origin (e.g. one the cache has not seen: reading it makes the cache ask the origin)."""
        target = self.server_dir("origin") / "data" / path.lstrip("/")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o644)
        self.files[path] = content

    def remove_tree(self, path: str) -> None:
        """Remove a directory added with add_file from the origin and the cache (module fixtures leave the
        shared namespace as they found it)."""
        for server in ("origin", "cache"):
            shutil.rmtree(self.server_dir(server) / "data" / path.strip("/"), ignore_errors=True)
        for name in [f for f in self.files if f.startswith(path.rstrip("/") + "/")]:
            del self.files[name]

    def in_cache(self, path: str) -> bool:
        return (self.server_dir("cache") / "data" / path.lstrip("/")).exists()

    # -- clients (run inside the namespace; the token goes through a 0600 file, never argv)
    def _client_env(self, scratch: Path, token_file: Path | None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
               "XDG_RUNTIME_DIR": str(scratch), "X509_CERT_DIR": str(self.ca_dir),
               "XRD_CONNECTIONRETRY": "1", "XRD_REQUESTTIMEOUT": "30", "XRD_STREAMTIMEOUT": "30"}
        if token_file is not None:
            env["BEARER_TOKEN_FILE"] = str(token_file)
        return env

    def _scratch(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="client-", dir=self.run_dir))

    @staticmethod
    def _secret_file(path: Path, content: str) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        return path

    def xrdcp(self, path: str, token: str | None, port: int = CACHE_PORT) -> ClientResult:
        """``xrdcp root://localhost:<port>/<path> -`` with ``BEARER_TOKEN_FILE`` (or no token)."""
        ambient = Path(f"/tmp/bt_u{os.getuid()}")  # WLCG bearer token discovery would find it
        if token is None and ambient.exists():
            raise XRootDSetupError(f"{ambient} exists: a 'no token' request would send it")
        scratch = self._scratch()
        try:
            token_file = self._secret_file(scratch / "token", token) if token is not None else None
            r = self._run_in_netns(["xrdcp", "--nopbar", "-f", f"root://localhost:{port}/{path}", "-"],
                                   env=self._client_env(scratch, token_file))
            return ClientResult(r.returncode, r.stdout, r.stderr.decode(errors="replace"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def xrdfs(self, token: str, *args: str, port: int = CACHE_PORT) -> ClientResult:
        """``xrdfs localhost:<port> ARGS`` (``ls``, ``stat``, ...) with ``BEARER_TOKEN_FILE``."""
        scratch = self._scratch()
        try:
            token_file = self._secret_file(scratch / "token", token)
            r = self._run_in_netns(["xrdfs", f"localhost:{port}", *args], env=self._client_env(scratch, token_file))
            return ClientResult(r.returncode, r.stdout, r.stderr.decode(errors="replace"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def https_get(self, path: str, token: str | None, port: int = CACHE_HTTPS_PORT) -> ClientResult:
        """``curl https://localhost:<port>/<path>`` (the cache's by default) with ``Authorization: Bearer``
        (or none)."""
        scratch = self._scratch()
        try:
            cmd = ["curl", "-sS", "--cacert", str(self.ca_pem), "-o", str(scratch / "body"),
                   "-w", "%{http_code}", f"https://localhost:{port}/{path.lstrip('/')}"]
            if token is not None:
                cmd[1:1] = ["-H", f"@{self._secret_file(scratch / 'headers', f'Authorization: Bearer {token}')}"]
            r = self._run_in_netns(cmd, env=self._client_env(scratch, None))
            body = (scratch / "body").read_bytes() if (scratch / "body").exists() else b""
            out = r.stdout.decode()
            status = int(out) if out.isdigit() else None
            return ClientResult(r.returncode, body, r.stderr.decode(errors="replace"), status)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- the keys XRootD holds
    def cached_jwks(self) -> dict[str, dict | None]:
        """For each server, the JWKS its SciTokens key cache holds for our issuer (None: not fetched)."""
        out: dict[str, dict | None] = {}
        for name in ("origin", "cache"):
            out[name] = None
            db = self.key_cache(name)
            if not db.exists():
                continue
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT keys FROM keycache WHERE issuer = ?", (ISSUER_URL,)).fetchone()
            if row:
                out[name] = json.loads(row[0])["jwks"]
        return out

    def refresh_issuer_keys(self) -> None:
        """Forget the cached keys: the next new token makes XRootD fetch the hub's JWKS again."""
        for name in ("origin", "cache"):
            db = self.key_cache(name)
            if db.exists():
                with sqlite3.connect(db) as conn:
                    conn.execute("DELETE FROM keycache WHERE issuer = ?", (ISSUER_URL,))

    def forwarded_requests(self) -> list[str]:
        """Request lines (method and path) that reached the hub through the TLS forwarder."""
        return [line.split(" ", 1)[1] for line in self.log_tail("forwarder", 10_000).splitlines()
                if line.startswith("request ")]


# ---- fixtures ---------------------------------------------------------------------------------------


#: the site setting that lets the cache's service account sign in
CACHE_SERVICE_SITE = {"auth": {"allowed_groups": ["physicists", CACHE_SERVICE_GROUP]}}


def add_provider_users(fac: DemoFacility, extra: dict[str, list[str]], only_physicist: tuple[str, ...] = ()) -> None:
    """Before ``fac`` starts (after ``fac.prepare()``): add provider users ``{name: groups}`` to the demo's
    users file (so that ``fac.password()`` knows them); users in ``only_physicist`` keep only that group."""
    users = [dict(u, groups=["physicists"]) if u["username"] in only_physicist else u
             for u in fac.users() if u["username"] not in extra]
    users += [{"username": name, "name": name, "groups": groups, "email": f"{name}@demo.invalid",
               "password": secrets.token_urlsafe(12)} for name, groups in extra.items()]
    write_private(fac.state_dir / "idp" / "users.json", json.dumps(users, indent=2))


@contextlib.contextmanager
def running_xrootd_facility(state: Path, admin_token: str, name: str = "xrootd") -> Iterator[DemoFacility]:
    """A demo facility whose issuer is ``https://localhost/hub/casa-issuer``, with the cache's grants, the
    origin-user and xcache-short grants, and the provider users bobby, ali (physicists), opsadmin (the
    facility admin) and xcache-svc (the cache's service account, alone in its group, which may sign in)."""
    fac = make_facility(state, admin_token, name=name, issuer_url_override=ISSUER_URL,
                        hub_configs=[EXTRA_HUB_CONFIG, USERS_HUB_CONFIG],
                        site=CACHE_SERVICE_SITE)
    fac.prepare()
    # the provider's users (the demo's users file, so that fac.password() knows them): bob is only a physicist
    # here, bobby and ali are physicists, opsadmin is the facility admin, xcache-svc is in its group only
    extra = {name: ["physicists"] for name in PREFIX_USERS}
    extra[ADMIN_USER] = ["physicists", "facility-admins"]
    extra[CACHE_SERVICE_USER] = [CACHE_SERVICE_GROUP]
    add_provider_users(fac, extra, only_physicist=("bob",))
    with fac:
        yield fac


@pytest.fixture(scope="session")
def xrootd_facility(tmp_path_factory, admin_token) -> DemoFacility:
    """The session's facility for the real XRootD tests (``running_xrootd_facility``)."""
    reason = xrootd_missing()
    if reason:
        pytest.fail(f"the real XRootD tests cannot run: {reason}")
    with running_xrootd_facility(tmp_path_factory.mktemp("xrootd-facility"), admin_token) as fac:
        yield fac


@pytest.fixture(scope="session")
def xrootd_site(xrootd_facility) -> XRootDSite:
    """Origin + XCache in a loopback-only namespace, trusting the hub's issuer (see module doc)."""
    run_dir = Path(tempfile.mkdtemp(prefix="casa-xrootd-"))
    os.chmod(run_dir, 0o755)
    site = XRootDSite(xrootd_facility, run_dir)
    try:
        site.start()
        print(f"xrootd site: bridge, forwarder, origin and cache ready in {site.startup_seconds:.2f} s")
        yield site
    finally:
        site.stop()


__all__ = ["ADMIN_USER", "CACHE_GRANT", "CACHE_SERVICE_GROUP", "CACHE_SERVICE_USER", "DATA_OWNERS",
           "SERVICE_USER", "SHORT_CACHE_GRANT", "SHORT_CACHE_LIFETIME", "SHORT_USER_GRANT", "SHORT_USER_LIFETIME", "HubRelay", "Token", "XRootDSite", "broker_token",
           "running_xrootd_facility", "xrootd_missing",
           "xrootd_facility", "xrootd_site"]
