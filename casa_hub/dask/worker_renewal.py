"""Worker credential renewal: the owner's client pushes each renewed storage token to the cluster's
workers over Dask's own channel.

Why this way (README, "Worker credentials"): the notebook already holds the user's storage token and
keeps it fresh (``casa_hub.tokens.renewal``: the broker, with the notebook's own hub credential), and
only the cluster's owner can talk to its scheduler (the gateway's per-cluster TLS, or the scheduler in
the notebook for dask-jobqueue). So the one component that may renew tokens already exists, and the
one channel that reaches every worker of every backend (local processes, Slurm, HTCondor, jobqueue)
already exists too: no hub token, gateway-admin credential or issuer key ever reaches a worker, and
nothing new runs on the batch side.

- ``WorkerTokenPusher`` (in the notebook's kernel) watches the token file ``$CASA_TOKEN_DIR/<grant>.token``
  and, whenever the renewal agent has replaced it, registers ``StorageTokenPlugin`` with the token
  under one fixed name. The scheduler keeps only the latest registration and gives it to every
  worker now and to every worker that joins later.
- ``StorageTokenPlugin.setup`` (on each worker) writes the token atomically (0600) to the worker's
  ``BEARER_TOKEN_FILE`` (a private file in the worker's directory when the backend gave it none) if
  it is for the same issuer, subject, audience and scope as the worker's current token and expires
  later; otherwise the current file stays. A token for another identity is refused.
- During an outage of the hub the agent keeps the old file, so nothing is pushed and each worker
  keeps its current token while it is valid; reads resume with the first token pushed afterwards.

``casa_hub.dask.get_client()`` starts a pusher for its client; for any other client call
``keep_worker_tokens_fresh(client)``. Token values are never logged or put in a message.

The plugin travels by value (this module and ``casa_hub.common.files`` are registered with cloudpickle),
and its worker side needs only the standard library and distributed: workers of any image renew, whether
or not casa_hub is installed there.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import cloudpickle
from distributed.diagnostics.plugin import WorkerPlugin

from casa_hub.common import files as _files
from casa_hub.common.files import token_file_name, write_private
from casa_hub.dask.worker_tokens import STORAGE_TOKEN_FILE

log = logging.getLogger("casa_hub.dask.worker_renewal")
#: on workers: under distributed's logger, so that the lines land in the worker's log
worker_log = logging.getLogger("distributed.worker.casa_hub")

#: the name under which the token is registered (one registration per cluster, the latest wins)
PLUGIN_NAME = "casa-storage-token"
#: the grant whose token file the pusher watches (default ``xcache``, the backends' storage grant)
WORKER_GRANT_ENV = "CASA_WORKER_STORAGE_GRANT"
DEFAULT_WORKER_GRANT = "xcache"
#: claims that must be equal for a pushed token to replace a worker's current one
IDENTITY_CLAIMS = ("iss", "sub", "aud", "scope")


class TokenRefused(ValueError):
    """A pushed token is not for the identity of the worker's current token (message: claim names only)."""


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT without verifying it (the worker only compares them; the storage verifies),
    or None when it is not a JWT with a numeric ``exp``. Standard library only (runs on workers)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    return claims if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def decide(current: dict[str, Any] | None, new: dict[str, Any], now: float) -> tuple[bool, str]:
    """(replace?, why) for a pushed token with claims ``new`` on a worker holding ``current``
    (None: no readable token). Raises TokenRefused for another identity."""
    if new["exp"] <= now:
        return False, "the pushed token has expired"
    if current is None:
        return True, "the worker had no readable token"
    differ = [k for k in IDENTITY_CLAIMS if current.get(k) != new.get(k)]
    if differ:
        raise TokenRefused(f"the pushed token differs from the worker's in {', '.join(differ)}; kept the worker's")
    if new["exp"] <= current["exp"]:
        return False, "the worker's token lives as long or longer"
    return True, "renewed"


def worker_token_path(local_directory: str | os.PathLike[str]) -> Path:
    """The token file of a worker whose backend gave it no ``BEARER_TOKEN_FILE``: a private
    directory (0700) in the worker's own directory."""
    directory = Path(local_directory) / "casa-tokens"
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    return directory / STORAGE_TOKEN_FILE


class StorageTokenPlugin(WorkerPlugin):
    """Carries one storage token to the workers; see the module's docstring."""

    name = PLUGIN_NAME
    idempotent = False  # a new registration always replaces the previous one

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:  # never the value
        claims = unverified_claims(self.token) or {}
        return f"<StorageTokenPlugin jti={claims.get('jti')} exp={claims.get('exp')}>"

    def setup(self, worker: Any) -> None:
        new = unverified_claims(self.token)
        if new is None:
            raise TokenRefused("the pushed value is not a JWT with an exp claim")
        path = Path(os.environ.get("BEARER_TOKEN_FILE") or worker_token_path(worker.local_directory))
        try:
            current = unverified_claims(path.read_text().strip())
        except OSError:
            current = None
        try:
            replace, why = decide(current, new, time.time())
        except TokenRefused as e:
            self._record(worker, path, new, "refused", str(e))
            raise
        if replace:
            write_private(path, self.token)
            os.environ["BEARER_TOKEN_FILE"] = str(path)  # for XRootD clients started from now on
        self._record(worker, path, new, "replaced" if replace else "kept", why)

    @staticmethod
    def _record(worker: Any, path: Path, new: dict[str, Any], outcome: str, why: str) -> None:
        worker.casa_storage_token = {"path": str(path), "outcome": outcome, "why": why, "jti": new.get("jti"),
                                     "exp": new.get("exp"), "at": time.time()}
        worker_log.info("casa worker token: %s pushed token jti=%s exp=%s (%s) in %s",
                 outcome, new.get("jti"), new.get("exp"), why, path)


def token_file_for(grant: str | None = None, token_dir: str | None = None) -> Path | None:
    """``<token dir>/<grant>.token`` (defaults: ``$CASA_TOKEN_DIR``, ``$CASA_WORKER_STORAGE_GRANT`` or
    ``xcache``); None without a token directory."""
    token_dir = token_dir or os.environ.get("CASA_TOKEN_DIR", "")
    if not token_dir:
        return None
    grant = grant or os.environ.get(WORKER_GRANT_ENV, "") or DEFAULT_WORKER_GRANT
    return Path(token_dir) / token_file_name(grant)


class WorkerTokenPusher:
    """Pushes the token in ``token_file`` to ``client``'s workers each time the file holds a new one."""

    def __init__(self, client: Any, token_file: Path, interval: float = 5.0) -> None:
        self.client = client
        self.token_file = Path(token_file)
        self.interval = interval
        self.pushed_jti: str | None = None
        self.skipped_jti: str | None = None
        self.identity: dict[str, Any] | None = None  # of the first token pushed: later ones must match
        self.pushes = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<WorkerTokenPusher {self.token_file} pushed={self.pushes} jti={self.pushed_jti}>"

    def push_once(self) -> dict[str, Any] | None:
        """Push the file's token if it is not the one pushed last: the workers' answers
        ``{address: {"status": ...}}``, or None when there was nothing new to push."""
        try:
            token = self.token_file.read_text().strip()
        except OSError as e:
            self.last_error = f"cannot read {self.token_file}: {e.strerror}"
            return None
        claims = unverified_claims(token)
        if claims is None or claims.get("jti") in (self.pushed_jti, self.skipped_jti):
            return None
        identity = {k: claims.get(k) for k in IDENTITY_CLAIMS}
        problem = ("it has expired" if claims["exp"] <= time.time() else
                   "it is for another identity than the tokens pushed before"
                   if self.identity not in (None, identity) else "")
        if problem:
            self.skipped_jti, self.last_error = claims.get("jti"), f"not pushed jti={claims.get('jti')}: {problem}"
            log.error("casa worker tokens: %s in %s", self.last_error, self.token_file)
            return None
        try:
            answers = self.client.register_plugin(StorageTokenPlugin(token), name=PLUGIN_NAME)
        except TokenRefused as e:  # a worker holds a token of another identity: it keeps it
            self.skipped_jti, self.last_error = claims.get("jti"), f"refused by a worker: {e}"
            log.error("casa worker tokens: jti=%s %s", claims.get("jti"), self.last_error)
            return None
        self.identity = identity
        self.pushed_jti, self.pushes, self.last_error = claims.get("jti"), self.pushes + 1, ""
        log.info("casa worker tokens: pushed jti=%s (exp %s) to %d worker(s)", claims.get("jti"),
                 claims.get("exp"), len(answers or {}))
        return answers or {}

    def _closed(self) -> bool:
        return getattr(self.client, "status", "") in ("closing", "closed")

    def _run(self) -> None:
        while not self._stop.is_set() and not self._closed():
            try:
                self.push_once()
            except Exception as e:  # the scheduler is away for a moment: the workers keep their token
                if self._closed():
                    break
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("casa worker tokens: could not push to the workers (%s); the workers keep their "
                            "current token; retrying in %.0f s", self.last_error, self.interval)
            self._stop.wait(self.interval)

    def start(self) -> WorkerTokenPusher:
        self._thread = threading.Thread(target=self._run, name="casa-worker-tokens", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


# the plugin is pickled by value: workers need not have casa_hub installed
for _module in (sys.modules[__name__], _files):
    cloudpickle.register_pickle_by_value(_module)

_pushers: weakref.WeakKeyDictionary[Any, WorkerTokenPusher] = weakref.WeakKeyDictionary()


def keep_worker_tokens_fresh(client: Any, *, grant: str | None = None, token_dir: str | None = None,
                             interval: float = 5.0) -> WorkerTokenPusher | None:
    """Start (once per client) pushing the notebook's storage token to ``client``'s workers whenever it
    is renewed; None when there is no such token file (no facility tokens in this environment)."""
    existing = _pushers.get(client)
    if existing is not None:
        return existing
    path = token_file_for(grant, token_dir)
    if path is None or not path.is_file():
        log.info("casa worker tokens: no storage token file (%s); workers keep the tokens their backend gave them",
                 path or "CASA_TOKEN_DIR is not set")
        return None
    if getattr(client, "asynchronous", False):
        raise ValueError("keep_worker_tokens_fresh needs a synchronous Client (the notebook's usual one)")
    pusher = WorkerTokenPusher(client, path, interval).start()
    _pushers[client] = pusher
    return pusher
