"""A real ``mlflow server`` whose auth app runs casa_hub's authorization function
(``casa_hub.integrations.mlflow.server_auth:authenticate_request``) and trusts a facility issuer: on
127.0.0.1, sqlite stores in its own directory. Used by tests/e2e/test_integration_mlflow_e2e.py, on
the facility ``shared_facilities.shared_integrations_facility`` (which has the ``mlflow`` grant)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

AUDIENCE = "casa-demo-mlflow"
MLFLOW_GRANT = {"audience": AUDIENCE, "scopes": ["mlflow.write"], "lifetime": 600, "groups": ["physicists"]}
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = admin
authorization_function = casa_hub.integrations.mlflow.server_auth:authenticate_request
"""


class MLflowServer:
    """``mlflow server`` with the auth app and casa_hub's authorization function, on 127.0.0.1."""

    def __init__(self, root: Path, port: int, issuer: str) -> None:
        self.root, self.port, self.issuer = root, port, issuer
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ini = self.root / "auth.ini"
        ini.write_text(AUTH_INI.format(db=self.root / "auth.db"))
        env = dict(
            os.environ,
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=secrets.token_urlsafe(24),
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # ~490 MB instead of ~2.3 GB
            CASA_MLFLOW_ISSUER=self.issuer,
            CASA_MLFLOW_AUDIENCE=AUDIENCE,
            CASA_MLFLOW_REQUIRED_SCOPE="mlflow.write",
        )
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1", "--app-name", "basic-auth",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"mlflow server did not answer /health within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the server we started (its uvicorn worker exits with it); kill what is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=20)
        for p in alive:
            p.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, method: str, path: str, token: str | None, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, f"{self.url}/api/2.0/mlflow/{path}", headers=headers, timeout=30, **kw)
