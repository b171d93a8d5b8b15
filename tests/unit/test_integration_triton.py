"""TritonIntegration: inference endpoints and model repository credentials, as paths only."""

from __future__ import annotations

import json
import logging
import secrets

import pytest
from integration_support import spawn_context
from traitlets.config import Config

from casa_hub.integrations import Contribution, TritonIntegration
from casa_hub.integrations.triton import endpoint_settings

INFER = secrets.token_urlsafe(40)
MODELS = secrets.token_urlsafe(40)
ENDPOINTS = {"gpu": "grpcs://triton.example.org:443", "cpu": "http://triton-cpu.example.org:8000"}


def make(log: logging.Logger | None = None, **settings) -> TritonIntegration:
    cfg = Config()
    for key, value in settings.items():
        setattr(cfg.TritonIntegration, key, value)
    return TritonIntegration(config=cfg, log=log or logging.getLogger("casa-test"))


def test_endpoints_without_credentials():
    part = make(endpoints=ENDPOINTS).contribute(spawn_context({}))
    assert part.env == {"TRITON_SERVER_URL": "grpcs://triton.example.org:443",
                        "CASA_TRITON_CONFIG": "/home/alice/.casa/config/triton.json"}
    assert json.loads(part.files["triton.json"]) == {
        "default": "gpu",
        "endpoints": {
            "gpu": {"url": "grpcs://triton.example.org:443", "protocol": "grpc",
                    "address": "triton.example.org:443", "ssl": True},
            "cpu": {"url": "http://triton-cpu.example.org:8000", "protocol": "http",
                    "address": "triton-cpu.example.org:8000", "ssl": False},
        },
        "token_file": None,
    }
    assert make(endpoints=ENDPOINTS).grants() == []


def test_inference_grant_and_model_repository_grant_are_token_files():
    tr = make(endpoints=ENDPOINTS, default_endpoint="cpu", grant="triton",
              model_repository="s3://models/{username}", model_repository_grant="models")
    assert tr.grants() == ["triton", "models"]
    part = tr.contribute(spawn_context({"triton": INFER, "models": MODELS}))
    assert part.env == {
        "TRITON_SERVER_URL": "http://triton-cpu.example.org:8000",
        "CASA_TRITON_CONFIG": "/home/alice/.casa/config/triton.json",
        "CASA_TRITON_TOKEN_FILE": "/home/alice/.casa/tokens/triton.token",
        "CASA_TRITON_MODEL_REPOSITORY": "s3://models/alice",
        "CASA_TRITON_MODEL_REPOSITORY_TOKEN_FILE": "/home/alice/.casa/tokens/models.token",
    }
    config = json.loads(part.files["triton.json"])
    assert config["default"] == "cpu"
    assert config["token_file"] == "/home/alice/.casa/tokens/triton.token"
    assert config["model_repository"] == {"url": "s3://models/alice",
                                          "token_file": "/home/alice/.casa/tokens/models.token"}
    blob = json.dumps(part.env) + part.files["triton.json"].decode()
    assert INFER not in blob and MODELS not in blob, "a token value reached env or the config file"


def test_model_repository_credentials_as_a_file_reference():
    tr = make(endpoints=ENDPOINTS, model_repository="s3://models/{username}",
              model_repository_credentials_file="/etc/casa/s3/{username}.ini")
    part = tr.contribute(spawn_context({}))
    assert part.env["CASA_TRITON_MODEL_REPOSITORY_CREDENTIALS"] == "/etc/casa/s3/alice.ini"
    assert json.loads(part.files["triton.json"])["model_repository"] == {
        "url": "s3://models/alice", "credentials_file": "/etc/casa/s3/alice.ini"}


def test_users_without_the_inference_grant_get_no_triton_configuration(caplog):
    with caplog.at_level(logging.INFO, logger="casa-test"):
        assert make(endpoints=ENDPOINTS, grant="triton").contribute(spawn_context({})) == Contribution()
    assert "no token for grant 'triton'" in caplog.text


def test_missing_model_repository_token_leaves_out_only_the_repository_token(caplog):
    tr = make(endpoints=ENDPOINTS, model_repository="s3://models/{username}", model_repository_grant="models")
    with caplog.at_level(logging.INFO, logger="casa-test"):
        part = tr.contribute(spawn_context({}))
    assert "CASA_TRITON_MODEL_REPOSITORY_TOKEN_FILE" not in part.env
    assert part.env["CASA_TRITON_MODEL_REPOSITORY"] == "s3://models/alice"
    assert "no token for the model repository grant 'models'" in caplog.text


def test_disabled_contributes_nothing():
    tr = make(endpoints=ENDPOINTS, grant="triton", enabled=False)
    assert tr.grants() == []
    assert tr.contribute(spawn_context({"triton": INFER})) == Contribution()


@pytest.mark.parametrize("settings, named", [
    ({}, "TritonIntegration.endpoints is empty"),
    ({"endpoints": {"gpu": "triton.example.org:8001"}}, "TritonIntegration.endpoints['gpu']"),
    ({"endpoints": {"gpu": "ftp://triton.example.org"}}, "TritonIntegration.endpoints['gpu']"),
    ({"endpoints": {"gpu": "grpcs://triton.example.org"}}, "must name the port"),
    ({"endpoints": {"bad name": "grpc://t:8001"}}, "invalid name"),
    ({"endpoints": ENDPOINTS, "default_endpoint": "tpu"}, "default_endpoint 'tpu' is not one of"),
    ({"endpoints": ENDPOINTS, "model_repository": "s3://m", "model_repository_grant": "models",
      "model_repository_credentials_file": "/etc/casa/s3.ini"}, "not both"),
    ({"endpoints": ENDPOINTS, "model_repository_grant": "models"}, "model_repository is not"),
    ({"endpoints": ENDPOINTS, "model_repository": "models/{user}"}, "model_repository"),
    ({"endpoints": ENDPOINTS, "model_repository": "s3://m",
      "model_repository_credentials_file": "s3.ini"}, "must be an absolute path"),
])
def test_misconfiguration_is_skipped_with_a_logged_reason(caplog, settings, named):
    tr = make(grant="triton", **settings)
    with caplog.at_level(logging.WARNING, logger="casa-test"):
        assert tr.grants() == []
        assert tr.contribute(spawn_context({"triton": INFER})) == Contribution()
    assert len(caplog.records) == 1
    assert "TritonIntegration is enabled but not configured correctly" in caplog.text
    assert named in caplog.text


def test_notebook_helper_reads_the_file_and_the_current_token(tmp_path, monkeypatch):
    ctx = spawn_context({"triton": INFER}, root=str(tmp_path))
    (tmp_path / "tokens").mkdir()
    (tmp_path / "config").mkdir()
    token_file = tmp_path / "tokens" / "triton.token"
    token_file.write_text(INFER)
    part = make(endpoints=ENDPOINTS, grant="triton").contribute(ctx)
    (tmp_path / "config" / "triton.json").write_bytes(part.files["triton.json"])
    monkeypatch.setenv("CASA_TRITON_CONFIG", part.env["CASA_TRITON_CONFIG"])

    s = endpoint_settings()
    assert (s["address"], s["ssl"], s["protocol"]) == ("triton.example.org:443", True, "grpc")
    assert s["headers"]() == {"Authorization": f"Bearer {INFER}"}
    token_file.write_text("renewed")  # the renewal agent replaced the file
    assert s["headers"]() == {"Authorization": "Bearer renewed"}
    assert endpoint_settings("cpu")["address"] == "triton-cpu.example.org:8000"
    with pytest.raises(KeyError, match="no Triton endpoint 'tpu'"):
        endpoint_settings("tpu")
