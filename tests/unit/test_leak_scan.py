"""The leak scan (tests/leak_scan.py) finds planted facility tokens, names file and line without
showing the token, ignores other JWTs, and makes a pytest run that leaked one exit non-zero."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
import leak_scan
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from leak_scan import dump_manifests, fingerprint, scan_files, scan_run

TESTS = Path(__file__).parents[1]


@pytest.fixture
def tmp_path():
    """Planted tokens live outside this session's base temporary directory, which the scan of this
    very session reads: a directory of its own, removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="casa-leak-selfcheck-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_token(iss: str = "https://hub.example.org/hub/casa-issuer", **extra) -> str:
    """A token shaped like a facility token, signed with a throw-away key."""
    now = int(time.time())
    claims = {"iss": iss, "sub": "alice", "aud": "casa-demo-xcache", "iat": now, "nbf": now, "exp": now + 600,
              "jti": str(uuid.uuid4()), "wlcg.ver": "1.0", "scope": "storage.read:/user/alice", **extra}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, ec.generate_private_key(ec.SECP256R1()),
                      algorithm="ES256", headers={"kid": "planted"})


def assert_not_shown(token: str, text: str) -> None:
    for part in token.split("."):
        assert part not in text, "the report shows (part of) the token"


def test_a_planted_token_is_found_with_file_line_and_fingerprint(tmp_path):
    token = fake_token()
    log = tmp_path / "hub.log"
    log.write_text(f"line one\nline two\n[I 2026-01-01 hub] answer {token} sent\n")
    [finding] = scan_files([log])
    assert (finding.path, finding.line, finding.how) == (log, 3, "raw")
    assert finding.fingerprint == fingerprint(token) and finding.jti == jwt.decode(
        token, options={"verify_signature": False})["jti"]
    assert f"{log}:3:" in str(finding)
    assert_not_shown(token, str(finding))


@pytest.mark.parametrize("wrap, how", [
    (lambda t: json.dumps({"doc": {"token": t}}), "raw"),                              # a JSON answer
    (lambda t: f'<td data-x="{t}">', "raw"),                                           # page HTML
    (lambda t: f"Authorization: Bearer {t}", "raw"),                                   # a request log
    (lambda t: f"?token={t}&x=1", "raw"),                                              # a URL
    (lambda t: json.dumps({"data": {"xcache.token": base64.b64encode(t.encode()).decode()}}), "base64"),  # Secret
], ids=["json", "html", "header", "url", "k8s secret data"])
def test_tokens_are_found_however_they_are_embedded(tmp_path, wrap, how):
    token = fake_token()
    path = tmp_path / "artifact.json"
    path.write_text(wrap(token))
    findings = scan_files([path])
    assert [(f.line, f.how, f.fingerprint) for f in findings] == [(1, how, fingerprint(token))]


def test_a_token_of_another_issuer_url_is_found_by_its_wlcg_claim(tmp_path):
    path = tmp_path / "x.log"
    path.write_text(fake_token(iss="https://tokens.example.org/issuer"))
    assert len(scan_files([path])) == 1


@pytest.mark.parametrize("text", [
    fake_token(iss="http://127.0.0.1:8089", **{"wlcg.ver": None}),   # the provider's ID token
    "0123456789abcdef" * 4,                                            # a JupyterHub API token
    "eyJhbGciOiJFUzI1NiJ9.eyJub3QiOiJqc29uIg.c2ln",                    # payload not an object
    "eyJub3QganNvbg.eyJub3QganNvbg.abc",                               # nothing decodes
    "version 1.2.3 and a.b.c and example.org.uk",
], ids=["provider ID token", "hub API token", "payload not an object", "garbage", "dotted words"])
def test_other_strings_are_not_reported(tmp_path, text):
    path = tmp_path / "x.log"
    path.write_text(text)
    assert scan_files([path]) == []


def test_the_run_scan_reads_logs_and_artifacts_but_not_token_stores(tmp_path):
    base, artifacts = tmp_path / "basetemp", tmp_path / "artifacts"
    planted = {
        base / "facility0" / "logs" / "hub.log": True,
        base / "site0" / "run" / "log" / "origin" / "xrootd.log": True,
        base / "slurm0" / "logs" / "slurmctld.out": True,
        base / "mlflow0" / "server.log": True,
        base / "facility0" / "homes" / "alice" / ".casa" / "tokens" / "xcache.token": False,  # where tokens belong
        artifacts / "pages-my-facility.html": True,
        artifacts / "k8s-manifests" / "pods.json": True,
        artifacts / "jupyterlab.png": False,
    }
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fake_token())
    found = {f.path for f in scan_run(base, artifacts)}
    assert found == {p for p, expected in planted.items() if expected}


def test_dumped_manifests_keep_the_pod_and_redact_the_secret(tmp_path):
    token = fake_token()
    pod = {"kind": "Pod", "metadata": {"name": "jupyter-alice"}, "spec": {"containers": [{"env": [
        {"name": "BEARER_TOKEN_FILE", "value": "/etc/casa/tokens/xcache.token"}]}]}}
    secret = {"kind": "Secret", "metadata": {"name": "jupyter-alice-casa"},
              "data": {"token.xcache": base64.b64encode(token.encode()).decode()}}
    path = dump_manifests(tmp_path, "manifests", [pod, secret])
    assert scan_files([path]) == [], "a dumped Secret must not hold the token"
    dumped = json.loads(path.read_text())
    assert dumped[0] == pod and dumped[1]["data"]["token.xcache"].startswith("<redacted sha256:")
    leaky = dict(pod, spec={"containers": [{"env": [{"name": "TOKEN", "value": token}]}]})
    assert len(scan_files([dump_manifests(tmp_path, "leaky", [leaky])])) == 1, "a token in a pod spec is found"


def test_the_conftest_runs_the_scan_at_session_end(request):
    conftests = [p for p in request.config.pluginmanager.get_plugins()
                 if getattr(p, "__file__", "") == str(TESTS / "conftest.py")]
    assert conftests, "tests/conftest.py is not loaded"
    assert conftests[0].pytest_sessionfinish is leak_scan.pytest_sessionfinish
    assert conftests[0].pytest_terminal_summary is leak_scan.pytest_terminal_summary


PLANTING_TEST = '''
def test_writes_a_log(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "hub.log").write_text("start\\n" + {text!r} + "\\n")
'''


def run_pytest_with_the_scan(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    """A separate pytest session with the leak scan plugin, whose one test writes ``text`` to a log."""
    (tmp_path / "test_plant.py").write_text(PLANTING_TEST.format(text=text))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS / "support"), os.environ.get("PYTHONPATH", "")]),
               CASA_TEST_ARTIFACTS=str(tmp_path / "artifacts"))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "leak_scan", "-p", "no:cacheprovider", "-q",
         f"--basetemp={tmp_path / 'basetemp'}", f"--rootdir={tmp_path}", str(tmp_path / "test_plant.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_run_that_leaked_a_token_exits_non_zero_and_says_where(tmp_path):
    token = fake_token()
    run = run_pytest_with_the_scan(tmp_path, f"token={token}")
    out = run.stdout + run.stderr
    assert run.returncode == 1, f"the scan must fail the run (exit {run.returncode}):\n{out}"
    assert "1 passed" in out, "the planting test itself passed: the failure is the scan's"
    assert "FACILITY TOKENS FOUND" in out and f"sha256:{fingerprint(token)}" in out, out
    assert "logs/hub.log:2:" in out, out
    assert_not_shown(token, out)


def test_a_clean_run_passes_and_says_it_scanned(tmp_path):
    run = run_pytest_with_the_scan(tmp_path, "nothing secret here")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "leak scan: no facility token" in out, out
