"""HTCondorIntegration: a client ``condor_config`` that makes HTCondor use the user's compute token.

The generated file is loaded by the real HTCondor Python bindings (PyPI ``htcondor``, module
``htcondor2``) through ``CONDOR_CONFIG`` in a subprocess, as in a notebook. No HTCondor daemon can
run here (neither Debian nor PyPI ships them), so no job reaches a schedd: the tests check what the
client would use, not a submission.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from integration_support import BINDINGS_SCRIPT, parse_result, spawn_context
from traitlets.config import Config

from casa_hub.integrations import Contribution, HTCondorIntegration

COMPUTE = secrets.token_urlsafe(48)
STORAGE = secrets.token_urlsafe(48)
SITE = {"collector_host": "cm.facility.example.org:9618", "schedd_host": "submit.facility.example.org"}


def make(log: logging.Logger | None = None, **settings) -> HTCondorIntegration:
    cfg = Config()
    for key, value in settings.items():
        setattr(cfg.HTCondorIntegration, key, value)
    return HTCondorIntegration(config=cfg, log=log or logging.getLogger("casa-test"))


def test_contribution_is_condor_config_with_the_compute_token_path():
    part = make(**SITE).contribute(spawn_context({"htcondor": COMPUTE, "xcache": STORAGE}))
    assert part.env == {"CONDOR_CONFIG": "/home/alice/.casa/config/condor_config"}
    text = part.files["condor_config"].decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "COLLECTOR_HOST = cm.facility.example.org:9618",
        "SCHEDD_HOST = submit.facility.example.org",
        "SEC_CLIENT_AUTHENTICATION = REQUIRED",
        "SEC_CLIENT_AUTHENTICATION_METHODS = SCITOKENS",
        "SEC_DEFAULT_AUTHENTICATION_METHODS = SCITOKENS",
        "SCITOKENS_FILE = /home/alice/.casa/tokens/htcondor.token",
    ]
    assert COMPUTE not in text and STORAGE not in text


def test_optional_settings_are_written_after_the_managed_ones():
    xc = make(**SITE, grant="compute", ca_file="/etc/pki/tls/certs/ca-bundle.crt",
              authentication_methods=["SCITOKENS", "SSL"], extra_config={"UID_DOMAIN": "facility.example.org"})
    text = xc.contribute(spawn_context({"compute": COMPUTE})).files["condor_config"].decode()
    assert "SEC_CLIENT_AUTHENTICATION_METHODS = SCITOKENS, SSL\n" in text
    assert "AUTH_SSL_CLIENT_CAFILE = /etc/pki/tls/certs/ca-bundle.crt\n" in text
    assert "SCITOKENS_FILE = /home/alice/.casa/tokens/compute.token\n" in text
    assert text.endswith("UID_DOMAIN = facility.example.org\n")


def test_users_without_the_compute_grant_get_no_htcondor_configuration(caplog):
    with caplog.at_level(logging.INFO, logger="casa-test"):
        assert make(**SITE).contribute(spawn_context({"xcache": STORAGE})) == Contribution()
    assert "no token for grant 'htcondor'" in caplog.text


def test_disabled_contributes_nothing():
    xc = make(**SITE, enabled=False)
    assert xc.grants() == []
    assert xc.contribute(spawn_context({"htcondor": COMPUTE})) == Contribution()


@pytest.mark.parametrize("settings, named", [
    ({}, "HTCondorIntegration.collector_host is not set"),
    ({"collector_host": "cm.example.org:9618 extra"}, "HTCondorIntegration.collector_host"),
    ({**SITE, "schedd_host": "submit\nSCITOKENS_FILE = /tmp/x"}, "HTCondorIntegration.schedd_host"),
    ({**SITE, "authentication_methods": []}, "authentication_methods is empty"),
    ({**SITE, "authentication_methods": ["SCITOKENS FS"]}, "invalid method"),
    ({**SITE, "extra_config": {"SCITOKENS_FILE": "/tmp/other.token"}}, "may not set SCITOKENS_FILE"),
    ({**SITE, "extra_config": {"sec_client_authentication_methods": "FS"}}, "may not set"),
    ({**SITE, "extra_config": {"UID_DOMAIN": "a\nSCHEDD_HOST = evil"}}, "single line"),
    ({**SITE, "extra_config": {"UID_DOMAIN": "a\\"}}, "backslash"),
    ({**SITE, "ca_dir": "certs"}, "HTCondorIntegration.ca_dir"),
    ({**SITE, "grant": ""}, "HTCondorIntegration.grant is empty"),
])
def test_misconfiguration_is_skipped_with_a_logged_reason(caplog, settings, named):
    xc = make(**settings)
    with caplog.at_level(logging.WARNING, logger="casa-test"):
        assert xc.grants() == []
        assert xc.contribute(spawn_context({"htcondor": COMPUTE})) == Contribution()
    assert len(caplog.records) == 1
    assert "HTCondorIntegration is enabled but not configured correctly" in caplog.text
    assert named in caplog.text


def load_with_bindings(config_file: Path, home: Path, names: list[str]) -> dict:
    """Load ``config_file`` with the real htcondor2 bindings through CONDOR_CONFIG, in a subprocess."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CONDOR_CONFIG": str(config_file)}
    run = subprocess.run([sys.executable, "-c", BINDINGS_SCRIPT, json.dumps(names)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=home)
    assert run.returncode == 0, run.stderr[-3000:]
    return parse_result(run.stdout)


@pytest.mark.e2e
def test_the_real_bindings_load_the_generated_config(tmp_path):
    ctx = spawn_context({"htcondor": COMPUTE, "xcache": STORAGE}, root=str(tmp_path / ".casa"))
    for d in (ctx.token_dir, ctx.config_dir):
        os.makedirs(d, mode=0o700)
    Path(ctx.token_path("htcondor")).write_text(COMPUTE)
    Path(ctx.token_path("xcache")).write_text(STORAGE)
    part = make(**SITE, ca_dir="/etc/ssl/certs").contribute(ctx)
    (Path(ctx.config_dir) / "condor_config").write_bytes(part.files["condor_config"])

    names = ["SCITOKENS_FILE", "SEC_CLIENT_AUTHENTICATION_METHODS", "SEC_DEFAULT_AUTHENTICATION_METHODS",
             "SEC_CLIENT_AUTHENTICATION", "COLLECTOR_HOST", "SCHEDD_HOST", "AUTH_SSL_CLIENT_CADIR"]
    out = load_with_bindings(Path(part.env["CONDOR_CONFIG"]), tmp_path, names)
    assert out["param"] == {
        "SCITOKENS_FILE": ctx.token_path("htcondor"),  # the user's own compute token, not BEARER_TOKEN_FILE
        "SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "SEC_DEFAULT_AUTHENTICATION_METHODS": "SCITOKENS",
        "SEC_CLIENT_AUTHENTICATION": "REQUIRED",
        "COLLECTOR_HOST": "cm.facility.example.org:9618",
        "SCHEDD_HOST": "submit.facility.example.org",
        "AUTH_SSL_CLIENT_CADIR": "/etc/ssl/certs",
    }
    # the configuration HTCondor sees names the token file and never holds a token
    assert not any(COMPUTE in v or STORAGE in v for v in out["all_values"])
    # a job description built in the notebook carries no token either
    assert "executable = /bin/echo" in out["submit"]
    assert COMPUTE not in out["submit"] and STORAGE not in out["submit"]
