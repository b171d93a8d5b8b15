"""Shared by the integration tests: a stand-in ServiceX, notebook-side scripts, a spawn context.

``RecordingServiceX`` is a tiny HTTP server that answers the first calls the real ServiceX client
makes (``GET /servicex`` for the server's capabilities, ``GET /servicex/transformation``) and
refuses everything else (a transform submission, a token refresh) with 403, recording the method,
path and ``Authorization`` header of every request. No ServiceX server is installable here.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from casa_hub.integrations import SpawnContext

SERVICEX_INFO = {"app-version": "1.5.6", "code-gen-image": {"uproot-raw": "sslhep/servicex_code_gen_raw_uproot:v1"},
                 "capabilities": []}


class Secret(str):
    """A token; its repr hides the value so that assertion messages never print it."""

    def __repr__(self) -> str:
        return f"<token {len(self)} chars>"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorization: Secret | None


class RecordingServiceX:
    """A stand-in ServiceX API at ``url`` that records what the client sends."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                auth = self.headers.get("Authorization")
                recorder.requests.append(Request(self.command, self.path, Secret(auth) if auth else None))
                if self.command == "GET" and self.path == "/servicex":
                    status, body = 200, SERVICEX_INFO
                elif self.command == "GET" and self.path.startswith("/servicex/transformation"):
                    status, body = 200, {"requests": []}
                else:
                    status, body = 403, {"message": "the test endpoint accepts no transforms"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _answer

            def log_message(self, *args: object) -> None:  # the requests are recorded instead
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServiceX:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def bearer_tokens(self) -> list[Secret | None]:
        """The bearer token of each recorded request (None: no or another kind of header)."""
        return [Secret(r.authorization[len("Bearer "):])
                if r.authorization and r.authorization.startswith("Bearer ") else None
                for r in self.requests]


# What a notebook does: a ServiceX query through the real client, with the progress bar off.
# The test endpoint refuses the transform, so ``deliver`` returns the error in place of files.
DELIVER_SCRIPT = """
import json, servicex
from servicex import dataset, deliver, query
from servicex.servicex_client import ServiceXClient

client = ServiceXClient()
spec = {"Sample": [{"Name": "ttbar",
                    "Dataset": dataset.FileList(["root://xcache.example.org//store/user/x/ttbar.root"]),
                    "Query": query.UprootRaw([{"treename": "Events", "filter_name": "Muon_pt"}])}]}
result = deliver(spec, progress_bar="none")
print("RESULT " + json.dumps({"config_file": client.config.config_file,
                              "cache_path": client.config.cache_path,
                              "endpoint": client.servicex.url,
                              "outcome": repr(result["ttbar"])[:300]}))
"""


# What a notebook does with HTCondor's Python bindings: read the configuration HTCondor sees
# (CONDOR_CONFIG) and build a job description. argv[1]: JSON list of the macros to print.
BINDINGS_SCRIPT = """
import json, sys, htcondor2
names = json.loads(sys.argv[1])
sub = htcondor2.Submit({"executable": "/bin/echo", "arguments": "hello", "output": "out.txt",
                        "request_cpus": "1", "+ProjectName": '"casa"'})
print("RESULT " + json.dumps({"param": {n: htcondor2.param.get(n) for n in names},
                              "all_values": [str(v) for v in htcondor2.param.values()],
                              "submit": str(sub)}))
"""


def parse_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the client printed no result:\n{stdout[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def spawn_context(tokens: dict[str, str] | None = None, username: str = "alice",
                  root: str = "/home/alice/.casa") -> SpawnContext:
    """What the spawner hands the integrations: paths as the notebook sees them, and tokens."""
    return SpawnContext(username, ["physicists"], f"{root}/tokens", f"{root}/config",
                        {k: Secret(v) for k, v in (tokens or {}).items()})
