"""The images' pinned requirements on the images' Python (3.13), as close to building the images as this
machine allows: scripts/images-py313-venv.sh installs each image's requirements.txt with casa_hub (as its
Dockerfile does) into ``.venv-py313-<image>``; here, in those venvs:

- the pins resolved together (``pip check``) and are the versions installed;
- the hub's authenticator and spawner load through their entry points;
- the worker image's entrypoint starts a real Dask scheduler and worker; the notebook's Python connects,
  hands the workers a storage token over Dask (``StorageTokenPlugin``) and runs the example analysis on the
  sample NanoAOD file with coffea on those workers, with the event count uproot gives on Python 3.11.

The renewal agent (``casa-hub renew-tokens``) on 3.13 against the real hub:
tests/deploy/test_images.py::test_entrypoint_keeps_a_token_fresh_with_the_real_hub[py313-worker].

Without the venvs these tests are skipped, unless ``CASA_REQUIRE_PY313=1`` (scripts/test.sh sets it after
building them): then their absence fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from casa_hub.common.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
IMAGES_NAMES = ("hub", "notebook", "worker")


def venv(image: str) -> Path:
    return ROOT / f".venv-py313-{image}"


def need(image: str) -> Path:
    python = venv(image) / "bin" / "python"
    if not python.exists():
        if os.environ.get("CASA_REQUIRE_PY313") == "1":
            pytest.fail(f"{python} is missing: scripts/images-py313-venv.sh did not build it")
        pytest.skip(f"{python} is missing (scripts/images-py313-venv.sh builds it)")
    return python


def pins(image: str) -> dict[str, str]:
    out = {}
    for line in (IMAGES / image / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[name.lower()] = version
    return out


def py(python: Path, code: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd="/", **kw)


@pytest.mark.parametrize("image", IMAGES_NAMES)
def test_the_pins_resolve_together_on_python_313(image):
    python = need(image)
    r = py(python, "import sys; print('%d.%d' % sys.version_info[:2])")
    assert r.stdout.strip() == "3.13", r.stdout + r.stderr
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    wanted = pins(image)
    r = py(python, "import json, sys, importlib.metadata as m; "
                   "print(json.dumps({n: m.version(n) for n in json.loads(sys.argv[1])}))", json.dumps(list(wanted)))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == wanted


def test_casa_hub_is_installed_from_the_build_context_not_this_checkout():
    python = need("notebook")
    r = py(python, "import casa_hub; print(casa_hub.__file__)")
    assert r.returncode == 0 and str(venv("notebook")) in r.stdout, r.stdout + r.stderr


def test_the_hub_image_loads_the_authenticator_and_spawner_by_their_entry_points():
    python = need("hub")
    code = """
from importlib.metadata import entry_points
import jupyterhub, oauthenticator
names = {"jupyterhub.authenticators": "casa-oidc", "jupyterhub.spawners": "casa-kube"}
for group, name in names.items():
    (ep,) = [e for e in entry_points(group=group) if e.name == name]
    print(group, name, ep.load().__name__)
print("jupyterhub", jupyterhub.__version__, "oauthenticator", oauthenticator.__version__)
"""
    r = py(python, code)
    assert r.returncode == 0, r.stderr
    assert "jupyterhub.authenticators casa-oidc" in r.stdout and "jupyterhub.spawners casa-kube" in r.stdout
    assert "jupyterhub 5.5.0 oauthenticator 17.4.0" in r.stdout


def fake_storage_token(sub: str = "alice") -> str:
    """A JWT-shaped token: the workers only read its claims (they never verify; the cache does)."""
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"iss": "https://hub.example.org", "sub": sub, "aud": "https://xcache.example.org",
              "scope": f"storage.read:/user/{sub}", "iat": now, "exp": now + 3600, "jti": "py313"}
    return f"{part({'alg': 'ES256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


CLIENT = """
import json, sys
from distributed import Client
from casa_hub.analysis import run
from casa_hub.analysis.sample import SAMPLE_FILE
from casa_hub.analysis.ttbar import Cuts
from casa_hub.dask.worker_renewal import StorageTokenPlugin
from casa_hub.dask import get_client  # the notebook's entry point imports on 3.13

client = Client(sys.argv[1], timeout=60)
client.wait_for_workers(1, timeout=60)
client.register_plugin(StorageTokenPlugin(open(sys.argv[2]).read()))
held = client.run(lambda dask_worker: bool(getattr(dask_worker, "casa_storage_token", None)))
versions = client.run(lambda: (sys.version.split()[0], __import__("distributed").__version__))
r = run({"ttbar": {"files": [str(SAMPLE_FILE)], "treename": "Events"}}, client=client, cuts=Cuts(), timeout=120)
print("RESULT " + json.dumps({"events": r["events"], "held": list(held.values()),
                              "worker_python": [v[0] for v in versions.values()],
                              "worker_distributed": [v[1] for v in versions.values()],
                              "python": sys.version.split()[0]}))
client.close()
"""


@pytest.mark.timeout(420)
def test_worker_image_runs_dask_and_the_notebook_runs_the_analysis_on_it(tmp_path):
    notebook, worker = need("notebook"), need("worker")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {"PATH": f"{worker.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "CASA_ENV_LIB": str(IMAGES / "common" / "casa-env.sh"), "CASA_RENEW_TOKENS": "0"}
    entrypoint = IMAGES / "worker" / "casa-worker-entrypoint.sh"
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("scheduler", "worker")}
    procs = [subprocess.Popen(["bash", str(entrypoint), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=tmp_path, stdout=logs["scheduler"],
                              stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        procs.append(subprocess.Popen(["bash", str(entrypoint), "worker", address, "--nthreads", "1",
                                       "--no-dashboard", "--local-directory", str(tmp_path / "worker")],
                                      env=env, cwd=tmp_path, stdout=logs["worker"], stderr=subprocess.STDOUT,
                                      start_new_session=True))
        token_file = tmp_path / "xcache.token"
        token_file.write_text(fake_storage_token())
        r = py(notebook, CLIENT, address, str(token_file), timeout=300, env={"HOME": str(tmp_path),
                                                                            "PATH": "/usr/bin:/bin"})
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert line, f"the client failed ({r.returncode}):\n{r.stderr[-3000:]}\nworker:\n{worker_log[-2000:]}"
        got = json.loads(line[len("RESULT "):])
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
        for f in logs.values():
            f.close()
    import uproot

    from casa_hub.analysis.sample import SAMPLE_FILE
    with uproot.open(SAMPLE_FILE) as f:
        entries = f["Events"].num_entries
    assert re.match(r"3\.13\.", got["python"]), got
    assert got["events"] == entries > 0, got
    assert got["held"] == [True], "the worker holds the storage token the notebook handed it"
    assert [re.match(r"3\.13\.", v) is not None for v in got["worker_python"]] == [True], got
    assert got["worker_distributed"] == [pins("worker")["distributed"]], got
