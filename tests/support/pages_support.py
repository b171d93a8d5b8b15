"""Support for the page tests: the small HTTP service the test facility's services ask, the
accessibility check with axe-core, and the secrets a page must never show."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from casa_hub.common.ports import free_port

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"


class ProbeService:
    """An HTTP service on 127.0.0.1 that tests/pages_hub_config.py's services ask: ``/health``
    and ``/cluster`` (a Dask cluster's state) answer 503 while ``healthy`` is cleared (the service
    is down); ``/gate`` tells whether a spawn may go past the "tokens" step (``gate``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.gate = threading.Event()
        self.gate.set()
        self.healthy = threading.Event()
        self.healthy.set()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                user = parse_qs(parts.query).get("user", ["nobody"])[0]
                answers = {
                    "/health": {"state": "answering"},
                    "/gate": {"open": probe.gate.is_set()},
                    "/cluster": {"state": "running", "workers": 2, "name": f"cluster-{user}",
                                 "dashboard": f"{probe.url}/dashboard/{user}"},
                }
                body = answers.get(parts.path)
                down = parts.path != "/gate" and not probe.healthy.is_set()
                self.send_response(404 if body is None else 503 if down else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body or {}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serious_violations(page: Any, report: Path) -> list[str]:
    """Run axe-core (all its rules) in ``page``; write the full report; return the serious and
    critical violations, one line each with the elements concerned."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    report.write_text(json.dumps(violations, indent=2))
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(map(str, n["target"])) for n in v["nodes"][:5])
        for v in violations
        if v.get("impact") in ("serious", "critical")
    ]


def secret_values(auth_state: dict[str, Any]) -> list[str]:
    """Token values held in a user's auth_state (facility tokens and the provider's tokens)."""
    found = [entry["token"] for entry in (auth_state.get("casa_tokens") or {}).values() if entry.get("token")]
    for key in ("access_token", "refresh_token", "id_token"):
        if isinstance(auth_state.get(key), str) and len(auth_state[key]) > 16:
            found.append(auth_state[key])
    return found
