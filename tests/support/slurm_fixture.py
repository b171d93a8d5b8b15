"""A real one-node Slurm (22.05, Debian packages) for the Dask batch tests.

``SlurmSite`` starts, all by PID and all its own:

- ``munged`` as the ``munge`` user, with a private key and socket in the run directory (the machine's
  ``/etc/munge`` and ``/run/munge`` are not used);
- ``slurmctld`` and ``slurmd`` (``-D``: in the foreground, so the PIDs are the daemons') with a
  generated ``slurm.conf`` and ``cgroup.conf`` (every setting LAB.md lists), inside a loopback-only
  network namespace to which ``127.0.0.2/32`` is added (else glibc decides IPv4 is unconfigured
  and slurmctld fails).

Client commands need ``SLURM_CONF`` (``SlurmSite.env``) and must run in the namespace
(``SlurmSite.run``); ``sinfo``/``squeue`` are wrapped in ``timeout`` because they hang while
slurmctld is down. The machine's ``/etc/slurm`` is never written.

The ``slurm_site`` fixture joins the namespace of the real XRootD site (``xrootd_site`` from
tests/xrootd_fixture.py): Dask workers started by Slurm then reach the XCache at
``root://localhost:1095`` like any other process of the namespace. Teardown stops every daemon by PID,
removes the run directory and removes the address it added (the namespace belongs to the XRootD site).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "casa"
CLUSTER_NAME = "casa-test"


class SlurmSetupError(RuntimeError):
    """The test Slurm could not be started; the message says what failed."""


def slurm_missing() -> str | None:
    """Why the real Slurm tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, munge and slurm daemons)"
    for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "munged", "runuser", "ip",
                 "timeout"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/install.sh test installs it)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the munge user is missing (the munge package creates it)"
    return None


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def slurm_conf(run_dir: Path, munge_socket: Path, cpus: int, real_memory_mb: int) -> str:
    """A one-node slurm.conf: controller and node on 127.0.0.1, no accounting, no cgroups."""
    state = run_dir / "state"
    return "\n".join([
        f"ClusterName={CLUSTER_NAME}",
        "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={state / 'ctld'}",
        f"SlurmdSpoolDir={state / 'slurmd'}",
        f"SlurmctldPidFile={state / 'slurmctld.pid'}",
        f"SlurmdPidFile={state / 'slurmd.pid'}",
        f"SlurmctldLogFile={run_dir / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={run_dir / 'log' / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "MinJobAge=5",
        "KillWait=5",
        "InactiveLimit=0",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory_mb} State=UNKNOWN",
        # a scheduler and workers share the 2 cores: each core may be given to 4 jobs
        f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        "",
    ])


CGROUP_CONF = "CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n"


@dataclass(repr=False)
class SlurmSite:
    """munged, slurmctld and slurmd in a network namespace; see the module docstring."""

    run_dir: Path
    netns: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_seconds: float = 0.0
    _added_address: bool = False

    def __repr__(self) -> str:
        return f"SlurmSite(netns={self.netns!r}, run_dir={str(self.run_dir)!r})"

    @property
    def conf(self) -> Path:
        return self.run_dir / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.run_dir / "munge" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_CONF": str(self.conf)}

    # -- lifecycle
    def start(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        for sub in ("etc", "log", "state/ctld", "state/slurmd"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        os.chmod(self.run_dir / "etc", 0o755)
        self._start_munged(timeout)
        self.conf.write_text(slurm_conf(self.run_dir, self.munge_socket, os.cpu_count() or 1,
                                        max(1024, int(_mem_total_mb() * 0.8))))
        (self.run_dir / "etc" / "cgroup.conf").write_text(CGROUP_CONF)
        for p in (self.conf, self.run_dir / "etc" / "cgroup.conf"):
            os.chmod(p, 0o644)
        r = self._netns(["ip", "addr", "add", "127.0.0.2/32", "dev", "lo"])
        if r.returncode == 0:
            self._added_address = True
        elif b"File exists" not in r.stderr:
            raise SlurmSetupError(f"cannot add 127.0.0.2 to lo in {self.netns}: {r.stderr.decode().strip()}")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"])
        self._wait_idle(timeout)
        self.startup_seconds = time.monotonic() - t0

    def stop_controller(self) -> None:
        """Stop slurmctld by PID (SIGTERM: it saves its state in StateSaveLocation first)."""
        proc = self.procs.pop("slurmctld")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start_controller(self, timeout: float = 60.0) -> None:
        """Start slurmctld again; it recovers jobs and nodes from StateSaveLocation."""
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait_idle(timeout, busy_ok=True)

    def restart_controller(self, timeout: float = 60.0) -> None:
        self.stop_controller()
        self.start_controller(timeout)

    def stop(self) -> None:
        """Stop the daemons this site started (by PID), then remove what it added."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._added_address:
            self._netns(["ip", "addr", "del", "127.0.0.2/32", "dev", "lo"])
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- helpers
    def _netns(self, cmd: list[str], env: dict[str, str] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], env=env, capture_output=True,
                              timeout=timeout)

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *cmd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _start_munged(self, timeout: float) -> None:
        munge = pwd.getpwnam("munge")
        d = self.munge_socket.parent
        d.mkdir(mode=0o755)
        key = d / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(1024))
        os.chown(d, munge.pw_uid, munge.pw_gid)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        self._spawn("munged", ["runuser", "-u", "munge", "--", "munged", "--foreground",
                               f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--log-file={d / 'munged.log'}", f"--pid-file={d / 'munged.pid'}",
                               f"--seed-file={d / 'munged.seed'}"])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmSetupError(f"munged did not start: {self.log_tail('munged')}")
            time.sleep(0.05)

    def _wait_idle(self, timeout: float, busy_ok: bool = False) -> None:
        """Wait until the node is up: idle or mixed (also allocated with ``busy_ok``: jobs run)."""
        ready = {"localhost idle", "localhost mixed"} | ({"localhost allocated"} if busy_ok else set())
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name in ("slurmctld", "slurmd"):
                if self.procs[name].poll() is not None:
                    raise SlurmSetupError(f"{name} exited ({self.procs[name].returncode}):\n{self.log_tail(name)}")
            r = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10)
            state = r.stdout.strip()
            if r.returncode == 0 and state in ready:
                return
            time.sleep(0.2)
        raise SlurmSetupError(f"the node did not become idle within {timeout:.0f} s (sinfo: {state!r}):\n"
                              f"{self.log_tail('slurmctld')}\n{self.log_tail('slurmd')}")

    def run(self, cmd: list[str], timeout: float = 30, user: str | None = None) -> subprocess.CompletedProcess:
        """A Slurm client command in the namespace (``timeout``-wrapped: it hangs if slurmctld is down)."""
        prefix = ["runuser", "-u", user, "--"] if user else []
        r = subprocess.run(["ip", "netns", "exec", self.netns, *prefix, "timeout", str(int(timeout)), *cmd],
                           env=self.env, capture_output=True, text=True, timeout=timeout + 10)
        return r

    def jobs(self) -> list[dict[str, str]]:
        """The jobs slurmctld knows (pending, running, completing): id, user, state, name."""
        r = self.run(["squeue", "-h", "-o", "%i|%u|%T|%j"])
        if r.returncode != 0:
            raise SlurmSetupError(f"squeue failed: {r.stderr.strip()}")
        rows = [line.split("|", 3) for line in r.stdout.splitlines() if line.strip()]
        return [dict(zip(("id", "user", "state", "name"), row, strict=True)) for row in rows]

    def wait_for_no_jobs(self, timeout: float = 60) -> list[dict[str, str]]:
        """Wait until no job is left; return what is left at the deadline (empty on success)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.jobs()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.3)

    def log_tail(self, name: str, lines: int = 25) -> str:
        candidates = [self.log_dir / f"{name}.log", self.log_dir / f"{name}.out",
                      self.munge_socket.parent / f"{name}.log"]
        out = []
        for path in candidates:
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def logs(self) -> str:
        """Every daemon log (for checks that no token value was logged)."""
        paths = [*self.log_dir.glob("*"), self.munge_socket.parent / "munged.log"]
        return "\n".join(p.read_text(errors="replace") for p in paths if p.is_file())


# ---- fixture ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_site(xrootd_site) -> SlurmSite:
    """Slurm in the XRootD site's loopback-only namespace (jobs reach the XCache at localhost:1095)."""
    reason = slurm_missing()
    if reason:
        pytest.fail(f"the real Slurm tests cannot run: {reason}")
    site = SlurmSite(Path(tempfile.mkdtemp(prefix="casa-slurm-")), xrootd_site.netns)
    try:
        site.start()
        print(f"slurm: munged, slurmctld and slurmd ready in {site.startup_seconds:.2f} s")
        yield site
    finally:
        site.stop()


__all__ = ["PARTITION", "SlurmSetupError", "SlurmSite", "slurm_missing", "slurm_site"]
