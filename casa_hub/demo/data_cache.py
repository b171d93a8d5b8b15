"""The demo's data cache: a real XRootD origin and an XCache in front of it, on this machine.

What runs (each process started here, stopped by PID in :meth:`DemoDataCache.stop`):

- inside a loopback-only network namespace (xrootd binds every interface, so it never listens on the
  machine's own addresses): the **origin**, exporting the demo's storage namespace ``/store``
  (``<state>/data/store``: the sample data set under ``/store/data/…``, each physicist's directory
  under ``/store/user/<name>/``), and the **XCache**, which verifies each user's storage token itself
  with XRootD's SciTokens plugin, configured by ``casa-hub site-config xrootd --prefix-safe`` from the
  hub's own configuration. The origin is reachable only from inside the namespace, i.e. by the
  cache, and serves it without a token (a site's origin would ask for the cache's own token: README,
  "The cache's own credential");
- byte relays (``casa_hub.demo.bridge``): clients on this machine read ``root://localhost:<cache_port>``,
  relayed into the namespace; the hub's issuer is published as ``https://localhost:<issuer_port>/hub/casa-issuer``
  in both namespaces (TLS ends at a relay with a certificate of the demo's own CA, the hub behind it),
  so that XRootD fetches the hub's real discovery document and keys, as it would at a site.

XRootD (scitokens-cpp) trusts only the system CA bundle: each xrootd runs in a private mount namespace
in which the demo's CA is bind-mounted over it. The machine's trust store is never changed; clients
get the CA through ``X509_CERT_DIR`` (XRootD) and ``REQUESTS_CA_BUNDLE`` (the MLflow server).
xrootd refuses to run as root: the servers run as the system user ``casa-xrootd``
(``scripts/install.sh`` creates it; so does :meth:`DemoDataCache.start` when it runs as root).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from casa_hub.demo.tls import hashed_ca_dir, make_test_ca
from casa_hub.demo.xrootd_servers import (
    BRIDGE,
    SERVICE_USER,
    SYSTEM_BUNDLE,
    XRootDServers,
    XRootDStartError,
    ensure_service_user,
    make_world_readable,
)

__all__ = ["BRIDGE", "CACHE_AUDIENCE", "SERVICE_USER", "SYSTEM_BUNDLE", "DataCacheError", "DemoDataCache",
           "data_cache_missing", "ensure_service_user", "make_world_readable"]
#: the audience of the physicists' storage grant in the demo (grant ``xcache``)
CACHE_AUDIENCE = "casa-demo-xcache"
ORIGIN_PORT, CACHE_PORT = 1094, 1095  # inside the namespace only


class DataCacheError(XRootDStartError):
    """The data cache could not start; the message says why and where its logs are."""


def data_cache_missing() -> str | None:
    """Why the demo's data cache cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "it needs root (a network namespace and the service user casa-xrootd)"
    for tool in ("xrootd", "ip", "openssl", "mount"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/install.sh installs it)"
    if not list(Path("/usr/lib").glob("*/libXrdAccSciTokens-5.so")):
        return "the XRootD SciTokens plugin (Debian: xrootd-scitokens-plugins) is not installed"
    if not Path(SYSTEM_BUNDLE).exists():
        return f"{SYSTEM_BUNDLE} is missing (Debian: ca-certificates)"
    return None


@dataclass
class DemoDataCache(XRootDServers):
    """Origin + XCache for one demo facility; see the module docstring."""

    start_error = DataCacheError

    #: a directory the servers' user can enter (0755): configuration, the CA, logs, the cache's space
    run_dir: Path
    #: the directory holding the namespace: ``<data_dir>/store/...``
    data_dir: Path
    hub_port: int
    #: the hub's issuer is ``https://localhost:<issuer_port>/hub/casa-issuer`` (both namespaces)
    issuer_port: int
    #: clients read ``root://localhost:<cache_port>//store/...``
    cache_port: int
    #: ``casa-hub site-config xrootd ARGS`` on the facility's hub configuration, returning the result
    site_config: Callable[[list[str]], subprocess.CompletedProcess]
    #: hub users whose own directories (``/store/user/<name>``) the cache serves
    users: list[str]
    netns: str = field(default_factory=lambda: f"casa-demo-{secrets.token_hex(4)}")
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"root://localhost:{self.cache_port}"

    @property
    def ca_dir(self) -> Path:
        """The demo CA as an OpenSSL hashed directory: the clients' ``X509_CERT_DIR``."""
        return self.run_dir / "ca-dir"

    @property
    def ca_file(self) -> Path:
        """The demo CA as a PEM file: ``REQUESTS_CA_BUNDLE`` of the hub's https clients."""
        return self.run_dir / "tls" / "ca.pem"

    def add_to_site(self, site: dict) -> None:
        """What the demo's site file gains with the cache: its endpoint and CA for notebooks
        (``integrations.xcache``), and the physicists' ``xcache`` grant also reads the sample data set
        (``/store/data``). The cache authorises by user and group for its audience (``--prefix-safe``), so
        the admins' ``operations`` grant (all of ``/store``) gets an audience of its own: an admin's
        everyday storage token then reads only what a physicist's does."""
        grants = site["tokens"]["grants"]
        grants["xcache"]["scopes"] = [*grants["xcache"]["scopes"], "storage.read:/data"]
        if "operations" in grants:
            grants["operations"]["audience"] = "casa-demo-operations"
        site.setdefault("integrations", {})["xcache"] = {"endpoint": self.url, "ca_dir": str(self.ca_dir)}

    # -- lifecycle
    def start(self, timeout: float = 60.0) -> None:
        user = ensure_service_user()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        self.log_dir.mkdir(exist_ok=True)
        tls = self.run_dir / "tls"
        tls.mkdir(exist_ok=True)
        _, cert, key = make_test_ca(tls, days=30)
        hashed_ca_dir(self.ca_file, self.ca_dir)
        server_key = tls / "xrootd.key"  # the servers' copy of the key, readable by their user only
        shutil.copy(key, server_key)
        os.chown(server_key, user.pw_uid, user.pw_gid)
        os.chmod(server_key, 0o400)
        self._write_configs(user, cert, server_key)
        self._create_netns()

        hub_sock, cache_sock = self.run_dir / "hub.sock", self.run_dir / "cache.sock"
        issuer_tls = ["tls-to-unix", "--unix", str(hub_sock), "--port", str(self.issuer_port), "--cert", str(cert),
                      "--key", str(key)]
        self._start_relay("hub-relay", ["unix-to-tcp", "--unix", str(hub_sock), "--tcp",
                                        f"127.0.0.1:{self.hub_port}"], timeout)
        self._start_relay("issuer-tls", issuer_tls, timeout)
        self._start_relay("ns-issuer-tls", issuer_tls, timeout, in_netns=True)
        self._start_relay("ns-cache-relay", ["unix-to-tcp", "--unix", str(cache_sock), "--tcp",
                                             f"127.0.0.1:{CACHE_PORT}"], timeout, in_netns=True)
        self._start_relay("cache-relay", ["tcp-to-unix", "--unix", str(cache_sock), "--port", str(self.cache_port)],
                          timeout)
        for name in ("origin", "cache"):
            self._spawn_cache_server(name)
        for name in ("origin", "cache"):
            self._wait_xrootd(name, timeout)

    def stop(self) -> None:
        """Stop every process started here (by PID), delete the namespace and the run directory."""
        self.stop_all()

    # -- setup
    def _write_configs(self, user: pwd.struct_passwd, cert: Path, server_key: Path) -> None:
        # TLS for the login, which carries the token (ztn needs it), not for the data: everything is on loopback,
        # and on 2 cores encrypting every byte twice costs a quarter of the throughput (README, Benchmarks)
        tls_lines = [f"xrd.tls {cert} {server_key}", f"xrd.tlsca certdir {self.ca_dir}", "xrootd.tls capable login"]
        origin = [f"xrd.port {ORIGIN_PORT}", "all.export /store",
                  f"oss.localroot {self.server_dir('origin') / 'data'}", *tls_lines]
        casa = self.server_dir("cache") / "casa"
        users = [a for name in self.users for a in ("--user", name)]
        r = self.site_config(["--audience", CACHE_AUDIENCE, "--base-path", "/store", "--prefix-safe", *users,
                              "--output-dir", str(casa)])
        if r.returncode != 0:
            raise DataCacheError(f"casa-hub site-config xrootd --prefix-safe failed: {r.stderr.strip()}")
        cache = [f"xrd.port {CACHE_PORT}", "all.export /store", "ofs.osslib libXrdPss.so", "pss.cachelib libXrdPfc.so",
                 f"pss.origin localhost:{ORIGIN_PORT}", f"oss.localroot {self.server_dir('cache') / 'data'}",
                 "pfc.ram 1g", *tls_lines, "xrootd.seclib libXrdSec.so", "sec.protocol ztn",
                 "ofs.authorize 1", f"continue {casa / 'xrootd-casa.cfg'}"]
        for name, lines in (("origin", origin), ("cache", cache)):
            d = self.server_dir(name)
            for sub in ("data", "admin", "xdg-cache", "log"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "xrootd.cfg").write_text("\n".join([*lines, f"all.adminpath {d / 'admin'}",
                                                     f"all.pidpath {d / 'admin'}"]) + "\n")
            for sub in ("admin", "xdg-cache", "log"):
                os.chown(d / sub, user.pw_uid, user.pw_gid)
        os.chown(self.server_dir("cache") / "data", user.pw_uid, user.pw_gid)
        (self.server_dir("origin") / "data" / "store").mkdir(exist_ok=True)  # the namespace is mounted here
        shutil.copy(self.ca_file, self.trust_bundle)
        make_world_readable(self.data_dir / "store")
        for p in (self.run_dir / "tls", self.ca_dir, *self.ca_dir.iterdir(), cert, self.ca_file,
                  self.trust_bundle, casa, *casa.iterdir(),
                  *(self.server_dir(n) / "xrootd.cfg" for n in ("origin", "cache"))):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)

    def _spawn_cache_server(self, name: str) -> None:
        # the origin sees the demo's namespace directory at its export
        mounts = ((self.data_dir / "store", self.server_dir(name) / "data" / "store"),) if name == "origin" else ()
        self._spawn_xrootd(name, mounts=mounts)
