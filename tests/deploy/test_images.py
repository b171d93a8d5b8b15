"""images/: the Dockerfiles linted and checked for pins and users, the entrypoint scripts run.

No image is built here (no container engine can run). The scripts are the real files from images/,
run with bash in a temporary directory with the environment a pod or batch job would have; only
the programs they start (`dask`, `casa-hub`) are stand-ins that record their arguments, except in
the last test, where the real `casa-hub renew-tokens` renews a token from the real hub's broker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from configparser import ConfigParser
from pathlib import Path

import jwt
import psutil
import pytest
from helpers import login_and_start_server, read_server_environ, verify_with_published_jwks
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
BIN = Path(sys.executable).parent
LIB = IMAGES / "common" / "casa-env.sh"
HOOK = IMAGES / "notebook" / "casa-start.sh"
ENTRYPOINT = IMAGES / "worker" / "casa-worker-entrypoint.sh"
SCRIPTS = [LIB, HOOK, ENTRYPOINT]
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in ("hub", "notebook", "worker")}
SECRET = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2lnbmF0dXJl"  # the token file's content
API_TOKEN = "f00dfeedcafe0123456789abcdef4242"  # the pod's JUPYTERHUB_API_TOKEN


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def requirements(image: str) -> dict[str, str]:
    """name -> pinned version from images/<image>/requirements.txt (every line must be pinned)."""
    pins = {}
    for line in (IMAGES / image / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"{image}: {line!r} is not pinned with =="
            pins[req.name.lower()] = spec[0].version
    return pins


# ---- the Dockerfiles -----------------------------------------------------------------------------

def test_the_three_images_have_dockerfiles():
    found = {p.parent.name for p in IMAGES.glob("*/Dockerfile")}
    assert found == set(DOCKERFILES), "images/ holds exactly the hub, notebook and worker Dockerfiles"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name):
    r = subprocess.run([BIN / "hadolint", "--no-color", "-c", ROOT / ".hadolint.yaml", DOCKERFILES[name]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"hadolint must report nothing:\n{r.stdout}{r.stderr}"


def test_hadolint_with_our_settings_refuses_unpinned_and_root_images(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ghcr.io/example/base:latest\nRUN apt-get update && apt-get install -y --no-install-recommends"
                   " curl && rm -rf /var/lib/apt/lists/* && pip install --no-cache-dir requests\nUSER root\n")
    r = subprocess.run([BIN / "hadolint", "--no-color", "-c", ROOT / ".hadolint.yaml", bad],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    for rule in ("DL3007", "DL3026", "DL3008", "DL3013", "DL3002"):  # latest, registry, apt, pip, root
        assert rule in r.stdout, f"{rule} must be reported: {r.stdout}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_image_pinned_and_final_user_not_root(name):
    steps = instructions(DOCKERFILES[name])
    froms = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert tag and tag != "latest" and "$" not in froms[0], f"{froms[0]} must name a fixed tag"
    expected = {"hub": r"quay\.io/jupyterhub/k8s-hub:4\.\d+\.\d+",
                "notebook": r"quay\.io/jupyter/scipy-notebook:\d{4}-\d{2}-\d{2}",
                "worker": r"python:3\.13\.\d+-slim-bookworm"}[name]
    assert re.fullmatch(expected, froms[0]), froms[0]
    users = [args.strip() for op, args in steps if op == "USER"]
    assert users, "the image sets its user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 1000, f"final USER {users[-1]} must be the unprivileged uid 1000"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_install_is_pinned(name):
    pinned_files = {"/tmp/casa/requirements.txt"}
    requirements(name)  # every line of the image's requirements file is name==version
    steps = instructions(DOCKERFILES[name])
    runs = " && ".join(args for op, args in steps if op == "RUN")
    installs = re.findall(r"\b(?:pip3?|python3? -m pip|mamba|conda|micromamba|uv pip|npm|apt|apt-get) install\b", runs)
    assert installs and all(i in ("pip install", "apt-get install") for i in installs), \
        f"{name}: only pip install and apt-get install, whose pins are checked here: {installs}"
    for cmd in re.split(r"&&|;|\|\|", runs):
        words = cmd.split()
        if words[:2] == ["pip", "install"]:
            rest = [w.strip("\"'") for w in words[2:]]
            assert "-r" in rest and rest[rest.index("-r") + 1] in pinned_files, cmd
            for w in rest:
                if w.startswith("-") or w in pinned_files:
                    continue
                assert w.startswith("/tmp/casa/src"), f"{name}: {w} is neither pinned nor casa_hub itself"
        if words[:2] == ["apt-get", "install"]:
            packages = [w for w in words[2:] if not w.startswith("-")]
            assert packages and all(re.fullmatch(r"[a-z0-9.+-]+=[\w.+~:-]+", p) for p in packages), cmd
    copies = [args for op, args in steps if op == "COPY"]
    assert any(c.endswith("/tmp/casa/requirements.txt") and f"images/{name}/requirements.txt" in c for c in copies)


def test_notebook_and_worker_run_the_same_dask_and_clients():
    notebook, worker = requirements("notebook"), requirements("worker")
    for package in ("dask", "distributed", "dask-gateway", "coffea", "xrootd", "fsspec-xrootd", "jupyterhub"):
        assert notebook[package] == worker[package], f"{package} differs between notebook and worker"
    for package in ("servicex", "mlflow-skinny", "htcondor"):
        assert package in notebook, f"the notebook image pins {package}"


def test_pins_satisfy_casa_hubs_own_requirements():
    cfg = ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [Requirement(r) for r in cfg["options"]["install_requires"].split("\n") if r.strip()]
    reqs += [Requirement(r) for r in cfg["options.extras_require"]["notebook"].split("\n") if r.strip()]
    for image in ("hub", "notebook", "worker"):
        pins = requirements(image)
        for req in reqs:
            if req.name.lower() in pins:
                assert req.specifier.contains(pins[req.name.lower()]), f"{image}: {req.name} {pins[req.name.lower()]} vs {req}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copied_files_exist_and_pass_the_ignore_file(name):
    keep = [ln[1:].rstrip("/") for ln in (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()
            if ln.startswith("!")]
    for op, args in instructions(DOCKERFILES[name]):
        if op != "COPY":
            continue
        sources = [w for w in args.split() if not w.startswith("--")][:-1]
        for src in sources:
            assert list(ROOT.glob(src)), f"{name}: COPY source {src} does not exist"
            assert any(src == k or src.startswith(k + "/") for k in keep), f"{src} is excluded from the context"


def test_scripts_are_installed_where_they_are_looked_for():
    nb, wk, hub = (DOCKERFILES[n].read_text() for n in ("notebook", "worker", "hub"))
    default_lib = re.search(r"CASA_ENV_LIB:-([^}]+)}", HOOK.read_text()).group(1)
    assert default_lib == re.search(r"CASA_ENV_LIB:-([^}]+)}", ENTRYPOINT.read_text()).group(1)
    for dockerfile in (nb, wk):
        assert f"images/common/casa-env.sh {default_lib}" in dockerfile
    # docker-stacks' start.sh sources *.sh in before-notebook.d, so the hook's exports reach the server
    assert "images/notebook/casa-start.sh /usr/local/bin/before-notebook.d/casa-start.sh" in nb
    assert "casa-worker-entrypoint.sh /usr/local/bin/casa-worker-entrypoint" in wk
    assert 'ENTRYPOINT ["tini", "--", "casa-worker-entrypoint"]' in wk
    # Zero to JupyterHub's jupyterhub_config.py loads this directory's *.py in sorted order
    assert "jupyterhub_config.d/*.py /usr/local/etc/jupyterhub/jupyterhub_config.d/" in hub


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True, timeout=30).returncode == 0
    r = subprocess.run([BIN / "shellcheck", "-x", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout


# ---- running the scripts -------------------------------------------------------------------------

@pytest.fixture
def pod():
    """A pod's facility files (as casa-kube mounts them) and the environment from the README.

    In a directory every user can reach (pytest's own is private to root), so that a script can
    also run as an unprivileged user."""
    tmp_path = Path(tempfile.mkdtemp(prefix="casa-pod-"))
    tmp_path.chmod(0o755)
    yield make_pod(tmp_path)
    shutil.rmtree(tmp_path, ignore_errors=True)


def make_pod(tmp_path: Path) -> dict:
    tokens, config, cas = tmp_path / "casa" / "tokens", tmp_path / "casa" / "config", tmp_path / "grid-certs"
    for d in (tokens, config, cas):
        d.mkdir(parents=True)
    tokens.chmod(0o700)
    (tokens / "xcache.token").write_text(SECRET)
    (tokens / "xcache.token").chmod(0o600)
    (config / "dask.yaml").write_text("gateway: {}\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "CASA_ENV_LIB": str(LIB), "CASA_X509_CERT_DIRS": f"{tmp_path}/no-such-dir:{cas}",
           "CASA_TOKEN_DIR": str(tokens), "CASA_CONFIG_DIR": str(config),
           "BEARER_TOKEN_FILE": str(tokens / "xcache.token"), "CASA_XCACHE_URL": "roots://xcache.example.org:1094",
           "DASK_CONFIG": str(config / "dask.yaml"), "JUPYTERHUB_API_TOKEN": API_TOKEN,
           "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api"}
    return {"env": env, "tokens": tokens, "config": config, "cas": cas, "work": work, "tmp": tmp_path}


def run(cmd: list, pod: dict, env: dict | None = None, drop: tuple = (), **kw) -> subprocess.CompletedProcess:
    """Run in the pod's work directory; no token value may appear in what it prints."""
    full = {k: v for k, v in {**pod["env"], **(env or {})}.items() if k not in drop}
    r = subprocess.run([str(c) for c in cmd], env=full, cwd=pod["work"], capture_output=True, text=True,
                       timeout=60, **kw)
    for secret in (SECRET, API_TOKEN):
        assert secret not in r.stdout + r.stderr, "a token value was printed"
    return r


def warnings(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if "WARNING" in ln]


def test_hook_in_a_healthy_pod_is_quiet_and_sets_x509_default(pod):
    r = run(["bash", HOOK], pod)
    assert r.returncode == 0 and warnings(r) == [], r.stderr
    assert f"casa-start: X509_CERT_DIR={pod['cas']} (default" in r.stderr
    assert f"facility tokens in {pod['tokens']}: xcache.token" in r.stderr


def test_hook_warns_about_a_missing_bearer_token_file(pod):
    missing = pod["tokens"] / "storage.token"
    r = run(["bash", HOOK], pod, env={"BEARER_TOKEN_FILE": str(missing)})
    assert r.returncode == 1
    assert f"casa-start: WARNING: BEARER_TOKEN_FILE={missing} does not exist" in r.stderr
    assert "the notebook server starts anyway" in r.stderr


@pytest.mark.parametrize("problem", ["no-dir", "empty-dir", "empty-file", "missing-config"])
def test_hook_warns_about_each_broken_facility_file(pod, problem):
    env = {}
    if problem == "no-dir":
        env["CASA_TOKEN_DIR"] = str(pod["tmp"] / "not-mounted")
        expected = "is not a directory"
    elif problem == "empty-dir":
        (pod["tokens"] / "xcache.token").unlink()
        env["BEARER_TOKEN_FILE"] = ""
        expected = "has no <grant>.token files"
    elif problem == "empty-file":
        (pod["tokens"] / "xcache.token").write_text("")
        expected = "is empty"
    else:
        env["CONDOR_CONFIG"] = str(pod["config"] / "condor_config")
        expected = f"CONDOR_CONFIG={pod['config']}/condor_config does not exist"
    r = run(["bash", HOOK], pod, env=env)
    assert r.returncode == 1 and any(expected in w for w in warnings(r)), r.stderr


def test_hook_names_the_fix_for_a_token_file_the_user_cannot_read(pod):
    token = pod["tokens"] / "xcache.token"
    if os.geteuid() == 0:  # as Kubernetes mounts it without an fsGroup: root-owned, 0440, another uid
        for p in (pod["tmp"] / "casa", pod["tokens"], pod["work"]):
            p.chmod(0o755)
        token.chmod(0o440)
        cmd = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "bash", HOOK]
    else:
        token.chmod(0)
        cmd = ["bash", HOOK]
    r = run(cmd, pod)
    assert r.returncode == 1
    assert any(f"token file {token} is not readable" in w and "singleuser.fsGid" in w for w in warnings(r)), r.stderr


def test_hook_outside_a_casa_pod_only_says_so(pod):
    r = run(["bash", HOOK], pod, drop=("CASA_TOKEN_DIR", "CASA_CONFIG_DIR", "BEARER_TOKEN_FILE", "DASK_CONFIG"))
    assert r.returncode == 0 and warnings(r) == []
    assert "CASA_TOKEN_DIR is not set" in r.stderr


@pytest.mark.parametrize("case", ["kept", "default", "none", "bad"])
def test_hook_x509_cert_dir(pod, case):
    env = {"kept": {"X509_CERT_DIR": str(pod["config"])}, "default": {},
           "none": {"CASA_X509_CERT_DIRS": str(pod["tmp"] / "nothing")},
           "bad": {"X509_CERT_DIR": str(pod["tmp"] / "nothing")}}[case]
    out = pod["tmp"] / "x509"
    r = run(["bash", "-c", f'source "{HOOK}"; printf "%s" "${{X509_CERT_DIR-<unset>}}" > "{out}"'], pod, env=env)
    value = out.read_text()
    expected = {"kept": str(pod["config"]), "default": str(pod["cas"]), "none": "<unset>",
                "bad": str(pod["tmp"] / "nothing")}[case]
    assert value == expected
    assert (r.returncode, bool(warnings(r))) == (0, case == "bad"), r.stderr


def test_hook_sourced_under_set_e_never_stops_the_server_start(pod):
    """As start.sh runs hooks: sourced, errexit on; the server's environment is what follows."""
    hooks = pod["tmp"] / "before-notebook.d"
    hooks.mkdir()
    shutil.copy(HOOK, hooks / "casa-start.sh")
    out = pod["tmp"] / "server.env"
    script = (f'set -e; before="$-"; for f in "{hooks}"/*.sh; do source "$f"; done; '
              f'[ "$-" = "$before" ] || exit 41; declare -F | grep -q " casa_" && exit 42; env > "{out}"')
    r = run(["bash", "-c", script], pod, env={"BEARER_TOKEN_FILE": str(pod["tokens"] / "gone.token")})
    assert r.returncode == 0, f"start.sh must go on (41: shell options changed, 42: functions left)\n{r.stderr}"
    assert "WARNING: BEARER_TOKEN_FILE" in r.stderr
    server_env = dict(ln.split("=", 1) for ln in out.read_text().splitlines() if "=" in ln)
    assert server_env["X509_CERT_DIR"] == str(pod["cas"]), "the default reaches the notebook server"
    r = run(["bash", "-c", script], pod, env={"CASA_ENV_LIB": str(pod["tmp"] / "missing.sh")})
    assert r.returncode == 0 and "missing.sh is missing" in r.stderr
    assert run(["bash", HOOK], pod, env={"CASA_ENV_LIB": str(pod["tmp"] / "missing.sh")}).returncode == 2


# ---- the worker entrypoint -----------------------------------------------------------------------

STUB = """#!/bin/sh
# stand-in for {name}: records its arguments (one per line) and whether it got a hub credential;
# the record appears complete (renamed into place), and a TERM after it is always noted
trap 'echo terminated >> "$STUB_LOG/{name}.started"; exit {term_rc}' TERM
{{ echo "pid $$"; echo "api-token ${{JUPYTERHUB_API_TOKEN:+set}}"; echo "token-dir ${{CASA_TOKEN_DIR:-}}";
  for a in "$@"; do echo "arg $a"; done; }} > "$STUB_LOG/{name}.recording"
mv "$STUB_LOG/{name}.recording" "$STUB_LOG/{name}.started"
{body}
"""


@pytest.fixture
def stubs(pod):
    bin_dir, log = pod["tmp"] / "stub-bin", pod["tmp"] / "stub-log"
    bin_dir.mkdir()
    log.mkdir()
    wait = "i=0; while [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.05; done"  # until TERM, 60 s at most
    # STUB_DASK_AFTER_RENEWAL: dask ends only once the renewal stand-in has recorded its start
    after_renewal = ('[ -z "$STUB_DASK_AFTER_RENEWAL" ] || { i=0; while [ ! -e "$STUB_LOG/casa-hub.started" ] '
                     '&& [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.05; done; }')
    bodies = {"dask": (f'{after_renewal}\n[ -z "$STUB_DASK_WAIT" ] || {{ {wait}; }}\nexit ${{STUB_DASK_RC:-0}}', 143),
              "casa-hub": (wait, 0)}
    for name, (body, term_rc) in bodies.items():
        (bin_dir / name).write_text(STUB.format(name=name, body=body, term_rc=term_rc))
        (bin_dir / name).chmod(0o755)
    pod["env"].update({"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log)})
    yield log
    for name in bodies:  # whatever the entrypoint did, leave no stand-in running
        started = record(log, name)
        if started and psutil.pid_exists(started["pid"]):
            proc = psutil.Process(started["pid"])
            if str(bin_dir) in " ".join(proc.cmdline()):
                proc.kill()


def record(log: Path, name: str) -> dict | None:
    path = log / f"{name}.started"
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return {"pid": int(lines[0].split()[1]), "api_token": lines[1] == "api-token set",
            "token_dir": lines[2].split(" ", 1)[1] if " " in lines[2] else "",
            "args": [ln[4:] for ln in lines[3:] if ln.startswith("arg ")], "terminated": "terminated" in lines}


NO_RENEWAL = ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN")


@pytest.mark.parametrize("role", ["worker", "scheduler"])
def test_entrypoint_builds_the_dask_command_line(pod, stubs, role):
    args = ["tls://10.1.2.3:8786", "--nthreads", "2", "--name", "casa worker 1", ""]
    r = run(["bash", ENTRYPOINT, role, *args], pod, env={"STUB_DASK_RC": "7"}, drop=NO_RENEWAL)
    assert r.returncode == 7, "the entrypoint exits with dask's status"
    assert record(stubs, "dask")["args"] == [role, *args], "dask gets the role and every argument unchanged"
    assert record(stubs, "casa-hub") is None, "no renewal without a hub to ask"


def test_entrypoint_runs_any_other_command(pod, stubs):
    job = pod["work"] / "casa-dask-job.sh"  # what an HTCondor container job hands to the entrypoint
    job.write_text('#!/bin/sh\necho "job ran with $*"\n')
    job.chmod(0o755)
    r = run(["bash", ENTRYPOINT, "./casa-dask-job.sh", "a b"], pod, drop=NO_RENEWAL)
    assert (r.returncode, r.stdout) == (0, "job ran with a b\n")
    assert record(stubs, "dask") is None


def test_entrypoint_usage_and_missing_command(pod, stubs):
    r = run(["bash", ENTRYPOINT], pod)
    assert r.returncode == 2 and "usage: casa-worker-entrypoint worker" in r.stderr
    r = run(["bash", ENTRYPOINT, "--help"], pod)
    assert r.returncode == 0 and "usage:" in r.stdout
    r = run(["bash", ENTRYPOINT, "no-such-program"], pod)
    assert r.returncode == 127 and "no-such-program: command not found" in r.stderr


def test_entrypoint_renews_tokens_alongside_dask_when_configured(pod, stubs):
    r = run(["bash", ENTRYPOINT, "worker", "tcp://127.0.0.1:8786"], pod,
            env={"STUB_DASK_RC": "3", "STUB_DASK_AFTER_RENEWAL": "1"})
    assert r.returncode == 3
    renewal = record(stubs, "casa-hub")
    assert renewal is not None, f"casa-hub renew-tokens must run:\n{r.stderr}"
    assert renewal["args"] == ["renew-tokens"], "the credential is never on the command line"
    assert renewal["api_token"] and renewal["token_dir"] == str(pod["tokens"])
    assert renewal["terminated"], "the renewal stops when dask ends"
    assert not psutil.pid_exists(renewal["pid"])
    assert f"renewing the token files in {pod['tokens']}" in r.stderr


@pytest.mark.parametrize("case", ["no-token-dir", "no-credential", "switched-off", "no-hub-url"])
def test_entrypoint_starts_no_renewal_unless_configured(pod, stubs, case):
    drop, env = {"no-token-dir": (("CASA_TOKEN_DIR",), {}), "no-credential": (("JUPYTERHUB_API_TOKEN",), {}),
                 "switched-off": ((), {"CASA_RENEW_TOKENS": "0"}), "no-hub-url": (("JUPYTERHUB_API_URL",), {})}[case]
    r = run(["bash", ENTRYPOINT, "worker", "tcp://127.0.0.1:8786"], pod, env=env, drop=drop)
    assert r.returncode == 0 and record(stubs, "dask")["args"] == ["worker", "tcp://127.0.0.1:8786"]
    assert record(stubs, "casa-hub") is None
    # a token directory with a hub URL but no credential is a misconfiguration worth a warning
    assert bool(warnings(r)) == (case == "no-credential"), r.stderr


@pytest.mark.parametrize("value", ["1", "sometimes"])
def test_entrypoint_refuses_required_renewal_it_cannot_do(pod, stubs, value):
    r = run(["bash", ENTRYPOINT, "worker", "x"], pod, env={"CASA_RENEW_TOKENS": value}, drop=("JUPYTERHUB_API_TOKEN",))
    assert r.returncode == 2 and "casa-worker: error: CASA_RENEW_TOKENS" in r.stderr
    assert record(stubs, "dask") is None, "dask does not start"


def test_entrypoint_warns_about_a_missing_bearer_token_file_and_still_starts(pod, stubs):
    r = run(["bash", ENTRYPOINT, "worker", "x"], pod, env={"BEARER_TOKEN_FILE": str(pod["work"] / "gone")},
            drop=NO_RENEWAL)
    assert r.returncode == 0 and record(stubs, "dask") is not None
    assert any("BEARER_TOKEN_FILE=" in w and "does not exist" in w for w in warnings(r))


def test_entrypoint_passes_sigterm_to_dask_and_stops_the_renewal(pod, stubs):
    env = {**pod["env"], "STUB_DASK_WAIT": "1"}
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "worker", "x"], env=env, cwd=pod["work"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (record(stubs, "dask") and record(stubs, "casa-hub")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record(stubs, "dask") and record(stubs, "casa-hub"), "dask and the renewal started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, f"the entrypoint exits with dask's status after its TERM\n{err}"
    assert record(stubs, "dask")["terminated"] and record(stubs, "casa-hub")["terminated"]
    assert not psutil.pid_exists(record(stubs, "casa-hub")["pid"])


PY313_WORKER_BIN = ROOT / ".venv-py313-worker" / "bin"  # scripts/images-py313-venv.sh


@pytest.mark.e2e
@pytest.mark.parametrize("python", ["test-venv", "py313-worker"])
def test_entrypoint_keeps_a_token_fresh_with_the_real_hub(pod, facility, admin_token, python):
    """The real `casa-hub renew-tokens`, started by the entrypoint, renews a due token at the
    real broker with alice's server credential while a stand-in dask waits for the new file; also with
    the worker image's packages on Python 3.13 (tests/deploy/test_images_py313.py)."""
    bin_path = BIN
    if python == "py313-worker":
        if not PY313_WORKER_BIN.exists():
            if os.environ.get("CASA_REQUIRE_PY313") == "1":
                pytest.fail(f"{PY313_WORKER_BIN} is missing: scripts/images-py313-venv.sh did not build it")
            pytest.skip(f"{PY313_WORKER_BIN} is missing (scripts/images-py313-venv.sh builds it)")
        bin_path = PY313_WORKER_BIN
    model = login_and_start_server(facility.hub_url, admin_token, "alice", facility.password("alice"))
    server_env = read_server_environ(model["servers"][""]["state"]["pid"])
    now = int(time.time())
    due = jwt.encode({"iat": now - 600, "exp": now + 60, "jti": "due"}, "k" * 32, algorithm="HS256")
    token = pod["tokens"] / "xcache.token"
    token.write_text(due)
    bin_dir = pod["tmp"] / "bin"
    bin_dir.mkdir()
    (bin_dir / "dask").write_text(f'#!/bin/sh\ni=0\nwhile grep -qx "{due}" "{token}"; do i=$((i+1)); '
                                  '[ $i -lt 1200 ] || exit 9; sleep 0.1; done\necho "renewed: $*"\n')
    (bin_dir / "dask").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{bin_path}:/usr/bin:/bin", "JUPYTERHUB_API_URL": server_env["JUPYTERHUB_API_URL"],
           "JUPYTERHUB_API_TOKEN": server_env["JUPYTERHUB_API_TOKEN"]}
    r = run(["bash", ENTRYPOINT, "worker", "tcp://127.0.0.1:8786"], pod, env=env)
    assert (r.returncode, r.stdout) == (0, "renewed: worker tcp://127.0.0.1:8786\n"), r.stderr
    new = token.read_text()
    claims = verify_with_published_jwks(new, facility.issuer_url, "casa-demo-xcache")
    assert claims["sub"] == "alice" and stat.S_IMODE(token.stat().st_mode) == 0o600
    for secret in (due, new, server_env["JUPYTERHUB_API_TOKEN"]):
        assert secret not in r.stdout + r.stderr
    renewer = int(re.search(r"renew-tokens \(pid (\d+)\)", r.stderr).group(1))
    assert not psutil.pid_exists(renewer), "the renewal agent ended with the worker"
