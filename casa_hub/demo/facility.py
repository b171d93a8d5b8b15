"""The embedded demo facility: a local OIDC provider and JupyterHub on 127.0.0.1.

``DemoFacility`` prepares a state directory (kept between runs: keys, secrets, users, database),
starts the provider and the hub as child processes, waits until both answer, and stops everything
it started. ``casa-hub demo`` and the test facilities both use it.

The hub is configured the way an admin configures one: the shipped drop-ins in
``jupyterhub_config.d/`` read a site file (``<state>/site.json``, written from :meth:`site_settings`
and ``site_overrides``), then ``loopback.py`` adds what only a one-machine hub needs (ports, the
state directory, the local Dask Gateway), then any ``extra_hub_config`` files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from casa_hub.analysis.sample import SAMPLE_FILE
from casa_hub.common.files import write_private
from casa_hub.common.ports import free_port, port_is_free
from casa_hub.demo import mlflow_service
from casa_hub.demo.data_cache import (
    CACHE_AUDIENCE,
    DataCacheError,
    DemoDataCache,
    data_cache_missing,
)

HERE = Path(__file__).resolve().parent
PROVIDER_SCRIPT = HERE / "oidc_provider.mjs"
HUB_CONFIG = HERE / "jupyterhub_config.py"
#: the drop-ins admins install, in a checkout of casa_hub
DROPINS_DIR = HERE.parent.parent / "jupyterhub_config.d"
LOGO = HERE / "logo.svg"

DEFAULT_USERS = [
    {"username": "alice", "name": "Alice Physicist", "groups": ["physicists"]},
    {"username": "bob", "name": "Bob Admin", "groups": ["physicists", "facility-admins"]},
    {"username": "eve", "name": "Eve Visitor", "groups": ["visitors"]},
]


class DemoError(RuntimeError):
    """The demo cannot start; the message says what to do."""


def find_node_modules(explicit: str | None = None) -> Path:
    """The node_modules directory holding configurable-http-proxy and oidc-provider."""
    candidates = [explicit, os.environ.get("CASA_NODE_MODULES"), Path.cwd() / "node_modules",
                  HERE.parent.parent / "node_modules"]
    for c in candidates:
        if c and (Path(c) / "oidc-provider").is_dir() and (Path(c) / ".bin" / "configurable-http-proxy").exists():
            return Path(c).resolve()
    raise DemoError(
        "cannot find node_modules with oidc-provider and configurable-http-proxy; run `npm ci` in the "
        "casa_hub checkout or pass --node-modules / set CASA_NODE_MODULES"
    )


def _write_secret(path: Path, value: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, value)
    return value


def _secret(path: Path, make: Callable[[], str]) -> str:
    return path.read_text() if path.exists() else _write_secret(path, make())


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class DemoFacility:
    state_dir: Path
    hub_port: int = 8000
    idp_port: int = 8089
    node_modules: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] = print
    #: extra JupyterHub config files, loaded after the demo's own (like jupyterhub_config.d)
    extra_hub_config: list[Path] = field(default_factory=list)
    #: keys merged into the provider's config.json (TTLs, claim names, users, ...)
    idp_overrides: dict[str, Any] = field(default_factory=dict)
    #: the facility issuer URL (``iss``); defaults to ``<hub_url>/hub/casa-issuer``
    issuer_url_override: str | None = None
    #: sections merged (one level deep) into the site file, e.g. ``{"tokens": {"broker_rate_per_minute": 100}}``
    site_overrides: dict[str, Any] = field(default_factory=dict)
    #: run Dask Gateway (local backend) as a hub service with a cluster per user
    dask: bool = False
    #: run the facility's MLflow tracking server (casa_hub's auth plugin) when MLflow is installed
    mlflow: bool = False
    #: run the data cache (a real XRootD origin and XCache, ``casa_hub.demo.data_cache``) when XRootD is
    #: installed and this runs as root; otherwise notebooks read the sample data from local files
    xcache: bool = False
    #: the sample data set (files x events per file; 0 events: none)
    data_files: int = 4
    data_events: int = 5000
    #: the drop-in directory (default: ``jupyterhub_config.d/`` of this checkout)
    dropins_dir: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: the running data cache (set by ``prepare`` when ``xcache`` is on and XRootD can run here)
    data_cache: DemoDataCache | None = None
    #: processes a stopped hub left running (servers with ``cleanup_servers = False``); ``stop`` ends them
    orphans: list[psutil.Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.node_modules = find_node_modules(str(self.node_modules) if self.node_modules else None)
        self.dropins_dir = Path(self.dropins_dir or DROPINS_DIR).resolve()
        if not sorted(self.dropins_dir.glob("*.py")):
            raise DemoError(f"no drop-in files in {self.dropins_dir}; run the demo from a casa_hub checkout "
                            "(the drop-ins are jupyterhub_config.d/ at its top level)")

    # ---- derived --------------------------------------------------------------------------------

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def idp_url(self) -> str:
        return f"http://127.0.0.1:{self.idp_port}"

    @property
    def issuer_url(self) -> str:
        if self.issuer_url_override:
            return self.issuer_url_override
        if self.data_cache is not None:  # XRootD trusts https issuers only (see casa_hub.demo.data_cache)
            return f"https://localhost:{self.data_cache.issuer_port}/hub/casa-issuer"
        return f"{self.hub_url}/hub/casa-issuer"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def site_settings(self) -> dict[str, Any]:
        """The demo's site file: the same sections an admin writes (README, "Settings"), with
        ``site_overrides`` merged into each section."""
        secrets_dir = self.state_dir / "secrets"
        site: dict[str, Any] = {
            "auth": {
                "oidc_issuer": self.idp_url,
                "client_id": "casa-hub",
                "client_secret": {"file": str(secrets_dir / "oidc_client_secret")},
                "oauth_callback_url": f"{self.hub_url}/hub/oauth_callback",
                "login_service": "the casa_hub demo identity provider",
                "allowed_groups": ["physicists"],
                "admin_groups": ["facility-admins"],
                "enable_auth_state": True,  # key: JUPYTERHUB_CRYPT_KEY, kept in the state dir
            },
            "facility": {"name": "casa_hub demo facility", "support_url": "mailto:facility-support@demo.invalid"},
            "tokens": {
                "issuer_url": self.issuer_url,
                "key_dir": str(self.state_dir / "issuer-keys"),
                "generate_key_if_missing": "ES256",
                "grants": {
                    "xcache": {"audience": CACHE_AUDIENCE, "scopes": ["storage.read:/user/{username}"],
                               "lifetime": 20 * 60, "groups": ["physicists"]},
                    "htcondor": {"audience": "casa-demo-htcondor",
                                 "scopes": ["compute.read", "compute.create", "compute.modify", "compute.cancel"],
                                 "groups": ["physicists"]},
                    # facility admins may read the whole cache namespace
                    "operations": {"audience": CACHE_AUDIENCE, "scopes": ["storage.read:/"],
                                   "lifetime": 10 * 60, "groups": ["facility-admins"]},
                },
                "broker_rate_per_minute": 30,
            },
            "spawner_kind": "local",
        }
        site["integrations"] = {"xcache": {}}
        if self.data_cache is not None:
            self.data_cache.add_to_site(site)
        if self.mlflow_enabled:
            extra = mlflow_service.site_sections(self.mlflow_url)
            site["tokens"]["grants"].update(extra["tokens"]["grants"])
            site["integrations"].update(extra["integrations"])
        for key, value in self.site_overrides.items():
            if isinstance(value, dict) and isinstance(site.get(key), dict):
                site[key] = {**site[key], **value}
            else:
                site[key] = value
        return site

    @property
    def mlflow_enabled(self) -> bool:
        """MLflow asked for and installed."""
        return self.mlflow and mlflow_service.mlflow_available()

    @property
    def mlflow_url(self) -> str:
        settings = self.state_dir / "settings.json"
        port = json.loads(settings.read_text()).get("mlflow_port") if settings.exists() else None
        return f"http://127.0.0.1:{port}" if port else ""

    def config_env(self) -> dict[str, str]:
        """The environment that loading the demo's hub config file needs (``casa-hub check``,
        ``casa-hub site-config``, ``casa-hub explain`` on it): the state directory, the site file and
        what the extra config files read (``extra_env``)."""
        return {**self.extra_env, "CASA_DEMO_STATE": str(self.state_dir),
                "CASA_SITE_CONFIG": str(self.state_dir / "site.json")}

    def users(self) -> list[dict[str, Any]]:
        return json.loads((self.state_dir / "idp" / "users.json").read_text())

    def password(self, username: str) -> str:
        return next(u["password"] for u in self.users() if u["username"] == username)

    # ---- state ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the state directory on the first run; reuse it afterwards."""
        first = not (self.state_dir / "settings.json").exists()
        self.progress(f"[1/3] {'creating' if first else 'reusing'} demo state in {self.state_dir}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        secrets_dir = self.state_dir / "secrets"
        client_secret = _secret(secrets_dir / "oidc_client_secret", lambda: secrets.token_urlsafe(32))
        _secret(secrets_dir / "crypt_key", lambda: secrets.token_hex(32))
        cookie_keys = _secret(secrets_dir / "idp_cookie_key", lambda: secrets.token_hex(32))
        users_file = self.state_dir / "idp" / "users.json"
        if not users_file.exists():
            users = [dict(u, password=secrets.token_urlsafe(9), email=f"{u['username']}@demo.invalid")
                     for u in DEFAULT_USERS]
            _write_secret(users_file, json.dumps(users, indent=2))
        idp_config = {
            "issuer": self.idp_url,
            "clients": [{
                "client_id": "casa-hub",
                "client_secret": client_secret,
                "redirect_uris": [f"{self.hub_url}/hub/oauth_callback"],
                "post_logout_redirect_uris": [f"{self.hub_url}/hub/login"],
            }],
            "users": self.users(),
            "jwks_file": "idp-signing-keys.json",
            "cookie_keys": [cookie_keys],
            "access_token_ttl": 600,
            "clock_tolerance": 0,
            # sessions, grants and tokens survive a provider restart, as the hub's auth_state does
            "storage_file": "provider-state.jsonl",
            **self.idp_overrides,
        }
        _write_secret(self.state_dir / "idp" / "config.json", json.dumps(idp_config, indent=2))
        self._plan_data_cache()
        settings = {
            "hub_port": self.hub_port,
            "hub_api_port": free_port(),
            "proxy_api_port": free_port(),
            "idp_url": self.idp_url,
            "issuer_url": self.issuer_url,
            "node_modules": str(self.node_modules),
            "extra_hub_config": [str(Path(f).resolve()) for f in self.extra_hub_config],
            "dropins_dir": str(self.dropins_dir),
            "dask": self.dask,
            "mlflow_port": free_port() if self.mlflow else None,
            "data_cache": {"url": self.data_cache.url, "ca_dir": str(self.data_cache.ca_dir)}
            if self.data_cache else None,
        }
        (self.state_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        (self.state_dir / "site.json").write_text(json.dumps(self.site_settings(), indent=2))
        self.prepare_data()
        self.log_dir.mkdir(exist_ok=True)

    def _plan_data_cache(self) -> None:
        self.data_cache = None
        if not self.xcache:
            return
        reason = data_cache_missing()
        if reason:
            self.progress(f"      no data cache: {reason}; notebooks read the sample data from local files")
            return
        if self.issuer_url_override:
            raise DemoError("the demo's data cache verifies tokens of the demo's own issuer: "
                            "do not set issuer_url_override with xcache")
        tag = secrets.token_hex(4)  # the run directory and the namespace carry the same tag
        self.data_cache = DemoDataCache(run_dir=Path(tempfile.gettempdir()) / f"casa-demo-xrootd-{tag}",
                                        netns=f"casa-demo-{tag}", data_dir=self.state_dir / "data", hub_port=self.hub_port,
                                        issuer_port=free_port(), cache_port=free_port(), site_config=self._site_config,
                                        users=[])

    def _site_config(self, args: list[str]) -> subprocess.CompletedProcess:
        """``casa-hub site-config xrootd ARGS`` on the demo's hub configuration, as an admin runs it."""
        return subprocess.run([sys.executable, "-m", "casa_hub.cli", "site-config", "xrootd", "-f", str(HUB_CONFIG),
                               *args], env=dict(self._base_env(), **self.config_env()), capture_output=True,
                              text=True, timeout=120)

    def prepare_data(self) -> None:
        """Each physicist's own directory ``/store/user/<name>/`` (holding the 200-event sample as
        ``sample/nano.root``) and the physicists' sample data set ``ttbar`` (CMS Open Data NanoAOD
        resampled into ``data_files`` files of ``data_events`` events) under ``<state>/data/store/data/ttbar``
        with its fileset file ``<state>/data/fileset.json``; once, the data set only with the analysis
        stack installed."""
        for user in self.users():
            own = self.state_dir / "data" / "store" / "user" / user["username"] / "sample" / "nano.root"
            if "physicists" in user.get("groups", []) and not own.exists():
                own.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SAMPLE_FILE, own)
        fileset = self.state_dir / "data" / "fileset.json"
        if fileset.exists() or not self.data_events:
            return
        if importlib.util.find_spec("uproot") is None:
            self.progress("the analysis stack is not installed (pip install 'casa_hub[analysis]'): no sample data")
            return
        from casa_hub.analysis.generate import main as generate_data_set

        self.progress(f"      writing the sample data set ttbar ({self.data_files} files x {self.data_events} events)")
        out = self.state_dir / "data" / "store" / "data" / "ttbar"
        if generate_data_set(["--files", str(self.data_files), "--events", str(self.data_events), "--out", str(out),
                          "--fileset", str(fileset), "--namespace", "/store/data/ttbar"]) != 0:
            raise DemoError(f"could not write the sample data into {out}")

    # ---- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.state_dir, start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def _wait_for(self, name: str, url: str, ok: Callable[[int | None], bool], timeout: float) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with code {proc.returncode}; last log lines:\n{self.log_tail(name)}")
            if ok(_http_status(url)):
                return
            time.sleep(0.2)
        raise DemoError(f"{name} did not answer at {url} within {timeout:.0f} s; last log lines:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self, timeout: float = 90.0) -> None:
        self.prepare()
        for port, what in ((self.hub_port, "--port"), (self.idp_port, "--idp-port")):
            if not port_is_free(port):
                raise DemoError(f"port {port} on 127.0.0.1 is in use; choose another with {what}")
        if not shutil.which("node"):
            raise DemoError("node (Node.js 20 or newer) is not on PATH")
        t0 = time.monotonic()
        self.progress(f"[2/3] starting the demo identity provider at {self.idp_url}")
        self.start_idp(timeout)
        if self.data_cache is not None:
            self.start_data_cache(timeout)
        if self.mlflow and not self.mlflow_enabled:
            self.progress("MLflow is not installed (pip install 'casa_hub[mlflow]'): running without the "
                          "tracking server; notebooks get no MLflow settings")
        elif self.mlflow:
            self.progress(f"      starting the MLflow tracking server at {self.mlflow_url}")
            cmd, env = mlflow_service.command_and_env(self.state_dir, int(self.mlflow_url.rsplit(":", 1)[1]),
                                                      self.issuer_url)
            if self.data_cache is not None:  # the issuer's https certificate is from the demo's CA
                env["REQUESTS_CA_BUNDLE"] = str(self.data_cache.ca_file)
            self._spawn("mlflow", cmd, dict(self._base_env(), **env))
        self.progress(f"[3/3] starting JupyterHub at {self.hub_url} (hub, proxy, token issuer)")
        self.start_hub(timeout)
        if self.mlflow_enabled:
            self._wait_for("mlflow", f"{self.mlflow_url}/health", lambda s: s == 200, 2 * timeout)
        self.progress(f"ready in {time.monotonic() - t0:.1f} s")

    def start_data_cache(self, timeout: float = 60.0) -> None:
        """Start the planned data cache, before the hub and the MLflow server. If it cannot start, say why,
        prepare the state again without it (nothing that reads the site file runs yet) and go on."""
        if self.data_cache is None:
            return
        self.progress(f"      starting the data cache: XRootD origin and XCache at {self.data_cache.url}")
        self.data_cache.users = [u["username"] for u in self.users() if "physicists" in u.get("groups", [])]
        try:
            self.data_cache.start(timeout)
        except (DataCacheError, OSError, subprocess.SubprocessError) as e:
            self.data_cache.stop()
            self.progress(f"      the data cache did not start, running without it (notebooks read the sample "
                          f"data from local files): {e}")
            self.xcache = False
            self.prepare()

    @staticmethod
    def _base_env() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CASA_DEMO_"))}

    def start_idp(self, timeout: float = 90.0) -> None:
        """Start the provider (again) from the prepared state and wait until it answers."""
        self._spawn("idp", [shutil.which("node") or "node", str(PROVIDER_SCRIPT),
                            str(self.state_dir / "idp" / "config.json")],
                    dict(self._base_env(), CASA_NODE_MODULES=str(self.node_modules)))
        self._wait_for("idp", f"{self.idp_url}/healthz", lambda s: s == 200, timeout)

    def start_hub(self, timeout: float = 90.0) -> None:
        """Start the hub (again) from the prepared state (same ports, database, keys) and wait until it answers."""
        base_env = self._base_env()
        hub_env = dict(
            base_env,
            **self.config_env(),
            JUPYTERHUB_CRYPT_KEY=(self.state_dir / "secrets" / "crypt_key").read_text(),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}",
        )
        self._spawn("hub", [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)], hub_env)
        self._wait_for("hub", f"{self.hub_url}/hub/api", lambda s: s == 200, timeout)

    def stop_process(self, name: str, timeout: float = 30.0) -> None:
        """Stop one started process ("hub" or "idp") by PID: SIGTERM, then SIGKILL to its process group.

        What the hub leaves running (its servers, with ``cleanup_servers = False``) is remembered
        in ``orphans`` and ended by ``stop``."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.orphans = [p for p in {*self.orphans, *tree} if _alive(p)]
        # the hub ends its proxy without waiting for it: wait until the public port is free again
        deadline = time.monotonic() + timeout
        while name == "hub" and not port_is_free(self.hub_port):
            if time.monotonic() > deadline:
                raise DemoError(f"port {self.hub_port} is still in use {timeout:.0f} s after the hub stopped")
            time.sleep(0.1)

    def restart_hub(self, timeout: float = 90.0) -> None:
        """Stop the hub process only and start it again with the same state. With
        ``c.JupyterHub.cleanup_servers = False`` the servers keep running and the new hub resumes
        them; the hub stops and starts its proxy (``cleanup_proxy``), which re-adds their routes."""
        self.stop_process("hub", timeout)
        self.start_hub(timeout)

    def descendants(self) -> list[psutil.Process]:
        found = [p for p in self.orphans if _alive(p)]
        procs = [*self.procs.values(), *(self.data_cache.procs.values() if self.data_cache else ())]
        for proc in procs:
            try:
                found.append(psutil.Process(proc.pid))
                found.extend(psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the hub (which stops its proxy and notebooks), then the provider; kill leftovers."""
        tree = self.descendants()
        for name in ("hub", "mlflow", "idp"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for p in self.orphans:  # no hub stops these any more
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.procs.clear()
        self.orphans.clear()
        if self.data_cache is not None:
            self.data_cache.stop()

    def __enter__(self) -> DemoFacility:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
