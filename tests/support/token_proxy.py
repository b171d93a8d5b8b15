"""A stand-in between the hub and the provider's token endpoint: forwards every POST to the real
endpoint and records what the provider answered; ``rewrite`` may change a successful answer, and
``hold`` (seconds) keeps the answer back after the provider has processed the request (a provider
whose answer is lost: the hub's request times out although the refresh token was spent)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TokenProxy(ThreadingHTTPServer):
    """Forwards POST /token to ``upstream``; ``rewrite`` may change a successful JSON answer."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = ""
        self.rewrite: Callable[[dict], dict] | None = None
        self.hold = 0.0
        self.answers: list[tuple[int, dict]] = []  # what the provider answered, in order
        self.secrets: set[str] = set()  # every token value that went through, for leak checks

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"


class _ProxyHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        proxy: TokenProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k: self.headers[k] for k in ("Content-Type", "Authorization", "Accept") if self.headers[k]}
        try:
            with urllib.request.urlopen(urllib.request.Request(proxy.upstream, body, headers), timeout=30) as r:
                status, answer = r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            status, answer = e.code, json.loads(e.read() or b"{}")
        except OSError:  # the provider is down: answer as a gateway in front of it would
            status, answer = 502, {"error": "bad_gateway"}
        if status != 502:
            proxy.answers.append((status, answer))
        proxy.secrets.update(v for k, v in answer.items() if k.endswith("_token") and isinstance(v, str))
        if proxy.hold:
            time.sleep(proxy.hold)  # the hub gives up first; the provider has already rotated
        if status == 200 and proxy.rewrite is not None:
            answer = proxy.rewrite(answer)
            proxy.secrets.add(answer["id_token"])
        out = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except OSError:  # the hub closed the connection (it timed out)
            pass

    def log_message(self, *args: object) -> None:  # keep the test output free of request lines
        pass
