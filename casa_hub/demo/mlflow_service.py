"""The demo facility's MLflow tracking server: ``mlflow server`` with MLflow's auth app, whose
authorization function is casa_hub's (``casa_hub.integrations.mlflow.server_auth``): a request is
accepted with a facility token of the ``mlflow`` grant (audience ``casa-demo-mlflow``, scope
``mlflow.write``), verified against the hub's published issuer, and acts as the token's ``sub``.

Everything lives in ``<state>/mlflow/`` (sqlite stores, artifacts, ``auth.ini``, the admin password);
the server listens on 127.0.0.1 only. Nothing here is a facility setting: the grant and the
integration go into the demo's site file (:func:`site_sections`).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

AUDIENCE = "casa-demo-mlflow"
GRANT = {"audience": AUDIENCE, "scopes": ["mlflow.write"], "lifetime": 20 * 60, "groups": ["physicists"]}
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = admin
authorization_function = casa_hub.integrations.mlflow.server_auth:authenticate_request
"""


def mlflow_available() -> bool:
    """Whether the MLflow server (with its auth app) is installed in this environment."""
    return importlib.util.find_spec("mlflow") is not None and importlib.util.find_spec("flask") is not None \
        and shutil.which("mlflow", path=str(Path(sys.executable).parent)) is not None


def site_sections(tracking_uri: str) -> dict[str, Any]:
    """What the site file gains with the MLflow server: the ``mlflow`` grant and the integration."""
    return {"tokens": {"grants": {"mlflow": GRANT}},
            "integrations": {"mlflow": {"grant": "mlflow", "tracking_uri": tracking_uri}}}


def command_and_env(state_dir: Path, port: int, issuer_url: str) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment (secrets are files or environment, never arguments)."""
    home = Path(state_dir) / "mlflow"
    (home / "artifacts").mkdir(parents=True, exist_ok=True, mode=0o700)
    ini = home / "auth.ini"
    ini.write_text(AUTH_INI.format(db=home / "auth.db"))
    password_file = home / "admin-password"
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password_file.read_text(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # ~490 MB instead of ~2.3 GB
        "CASA_MLFLOW_ISSUER": issuer_url,
        "CASA_MLFLOW_AUDIENCE": AUDIENCE,
        "CASA_MLFLOW_REQUIRED_SCOPE": "mlflow.write",
    }
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--app-name", "basic-auth",
           "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
           "--artifacts-destination", str(home / "artifacts")]
    return cmd, env
