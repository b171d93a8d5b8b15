"""What xrootd servers in one loopback-only network namespace share: the demo's data cache
(``casa_hub.demo.data_cache``) and the tests' XRootD site (``tests/support/xrootd_fixture.py``).

``XRootDServers`` is a mixin for a class with the attributes ``run_dir`` (a directory the servers' user can
enter), ``netns`` (the namespace's name), ``procs`` (name -> ``Popen`` of what it started) and ``ca_dir`` (the
local CA, hashed). Each server ``<name>`` lives in ``<run_dir>/<name>/`` (``xrootd.cfg``, ``log/``, ``xdg-cache/``)
and runs as ``SERVICE_USER`` in a private mount namespace in which ``<run_dir>/tls/trust-bundle.pem`` replaces
the system CA bundle (scitokens-cpp trusts only that bundle); the machine's own trust store is never changed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from casa_hub.demo import bridge

SERVICE_USER = "casa-xrootd"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: the byte relays' script (``casa_hub/demo/bridge.py``), run as a process per relay
BRIDGE = Path(bridge.__file__).resolve()


class XRootDStartError(RuntimeError):
    """A server or relay did not start; the message holds the end of its log."""


def ensure_service_user() -> pwd.struct_passwd:
    """The system user the xrootd servers run as, created (no home, no shell) when missing."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def make_world_readable(root: Path) -> None:
    """Directories 0755 and files 0644 below ``root``: what the servers' user must read."""
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


class XRootDServers:
    """The shared part: paths, logs, starting and waiting for servers and relays, stopping them all."""

    run_dir: Path
    netns: str
    procs: dict[str, subprocess.Popen]
    ca_dir: Path
    #: the error raised when something does not start
    start_error: type[Exception] = XRootDStartError

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def trust_bundle(self) -> Path:
        """The CA bundle the servers see instead of the system one: the local CA only."""
        return self.run_dir / "tls" / "trust-bundle.pem"

    def server_dir(self, name: str) -> Path:
        return self.run_dir / name

    def xrootd_log_path(self, name: str) -> Path:
        # with -n NAME, xrootd writes -l DIR/FILE as DIR/NAME/FILE
        return self.server_dir(name) / "log" / name / "xrootd.log"

    def xrootd_log(self, name: str) -> str:
        path = self.xrootd_log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The end of the output of the process ``name`` started (``<log_dir>/<name>.log``)."""
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _run_in_netns(self, cmd: list[str], env: dict[str, str] | None = None, check: bool = False,
                      timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], env=env, capture_output=True,
                              check=check, timeout=timeout)

    def _create_netns(self) -> None:
        """The namespace, with only loopback, up."""
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self._run_in_netns(["ip", "link", "set", "lo", "up"], check=True)

    def _start_relay(self, name: str, args: list[str], timeout: float, in_netns: bool = False) -> None:
        """Start ``casa_hub/demo/bridge.py ARGS`` (in the namespace with ``in_netns``) and wait until it listens."""
        ready = self.run_dir / f"{name}.ready"
        cmd = [sys.executable, str(BRIDGE), *args, "--ready-file", str(ready)]
        self._spawn(name, ["ip", "netns", "exec", self.netns, *cmd] if in_netns else cmd)
        self._wait_file(name, ready, timeout)

    def _spawn_xrootd(self, name: str, env: dict[str, str] | None = None,
                      mounts: tuple[tuple[Path, Path], ...] = ()) -> None:
        """Start ``xrootd -n <name>`` in the namespace as ``SERVICE_USER``, in a private mount namespace (``ip
        netns exec`` makes one) where the trust bundle replaces the system one, and ``mounts`` (source,
        target) are bound too."""
        d = self.server_dir(name)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_CACHE_HOME": str(d / "xdg-cache"),
                "X509_CERT_DIR": str(self.ca_dir), "HOME": str(d)}
        pairs = ((self.trust_bundle, Path(SYSTEM_BUNDLE)), *mounts)
        script = " && ".join(f'mount --bind "${{{2 * i + 1}}}" "${{{2 * i + 2}}}"' for i in range(len(pairs)))
        args = [str(p) for pair in pairs for p in pair]
        script += f' && shift {len(args)} && exec "$@"'
        self._spawn(name, ["ip", "netns", "exec", self.netns, "sh", "-c", script, "sh", *args, "xrootd", "-R",
                           SERVICE_USER, "-n", name, "-c", str(d / "xrootd.cfg"), "-l", str(d / "log" / "xrootd.log")],
                    env={**base, **(env or {})})

    def _wait_file(self, name: str, path: Path, timeout: float) -> None:
        """Wait until the process ``name`` has written ``path`` (a relay's ready file)."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.procs[name].poll() is not None:
                raise self.start_error(f"{name} exited ({self.procs[name].returncode}): {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise self.start_error(f"{name} did not start within {timeout:.0f} s: {self.log_tail(name)}")
            time.sleep(0.05)

    def _wait_xrootd(self, name: str, timeout: float, since: int = 0) -> None:
        """Wait for the server's own "xrootd <name>@… initialization completed" line after byte ``since`` of
        its log (a restart appends); fail at once on "initialization failed" or when it exits."""
        log = self.xrootd_log_path(name)
        deadline = time.monotonic() + timeout
        while True:
            raw = log.read_bytes() if log.exists() else b""
            text = raw[since if len(raw) >= since else 0:].decode(errors="replace")
            marker = f"xrootd {name}@"
            if marker in text and "initialization completed" in text.split(marker)[-1]:
                return
            if "initialization failed" in text or self.procs[name].poll() is not None:
                tail = "\n".join(text.splitlines()[-25:])
                raise self.start_error(f"xrootd {name} failed to start:\n{self.log_tail(name)}\n{tail}")
            if time.monotonic() > deadline:
                raise self.start_error(f"xrootd {name} did not start within {timeout:.0f} s (log: {log})")
            time.sleep(0.05)

    def stop_process(self, name: str) -> None:
        """Stop one started process by PID: SIGTERM, then SIGKILL after 10 s."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        """Stop every process started (the last started first), delete the namespace and the run directory."""
        for name in reversed(list(self.procs)):
            self.stop_process(name)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
