"""The token renewal agent: keeps every token file in ``CASA_TOKEN_DIR`` fresh.

For each ``<grant>.token`` file the agent reads the token's ``iat``/``exp`` (without verifying it:
the file is the notebook's own), renews it at ``renew_fraction`` of its lifetime by calling the hub's
token broker (``POST $JUPYTERHUB_API_URL/casa/tokens/<grant>`` with ``$JUPYTERHUB_API_TOKEN``) and
replaces the file atomically (a 0600 temp file in the same directory, fsync, ``os.replace``), so a
reader always sees one complete token.

When the broker cannot be reached, answers 5xx or 429, the current file is left untouched and the
call is retried with capped exponential backoff and jitter (at least ``Retry-After`` after a 429),
never sleeping past the current token's expiry. A 401/403/404 means the grant is no longer available
to this user: the agent stops renewing it and says so. Token values are never logged.

It runs inside the notebook's Jupyter server (``casa_hub.tokens.renewal.server_extension``) or as the
``casa-hub renew-tokens`` command (``casa_hub.cli.renew_tokens``). Token files are handled in
``renewal_files``, calls to the broker in ``renewal_broker``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from traitlets import Float, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from casa_hub.common.files import token_file_name
from casa_hub.tokens.renewal.broker_client import (
    BrokerError,
    BrokerUnavailable,
    GrantRefused,
    hub_ssl_options,
    redact,
    request_token,
)
from casa_hub.tokens.renewal.files import (
    TokenTimes,
    grant_files,
    read_token_times,
    token_times,
    write_token_file,
)

#: after a renewal, wait at least this long before the next one, whatever the new token says
MIN_RENEW_INTERVAL = 1.0
#: longest single sleep: the file and the clock are looked at again at least this often
MAX_SLEEP = 60.0


# ---- scheduling arithmetic (pure, tested with an injected clock) -------------------------------


def renewal_time(iat: float, exp: float, fraction: float) -> float:
    """When a token issued at ``iat`` and expiring at ``exp`` should be renewed."""
    return iat + fraction * max(0.0, exp - iat)


def retry_delay(
    failures: int,
    *,
    now: float,
    expires_at: float,
    initial: float,
    maximum: float,
    jitter: float,
    rand: float,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retrying after ``failures`` earlier consecutive failures (0-based).

    Exponential (``initial * 2**failures``, at most ``maximum``), shortened by up to ``jitter``
    (a fraction, scaled by ``rand`` in [0, 1)), at least ``retry_after`` when the broker gave one,
    and never past ``expires_at`` while the current token is still valid.
    """
    base = min(maximum, initial * 2.0 ** min(failures, 64))
    delay = base * (1.0 - jitter * rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    remaining = expires_at - now
    if remaining > 0:
        delay = min(delay, remaining)
    return max(0.0, delay)


# ---- the agent -----------------------------------------------------------------------------------


@dataclass
class GrantState:
    """What the agent knows about one grant (for logs, tests and ``--once`` results)."""

    grant: str
    path: Path
    status: str = "scheduled"  # scheduled | renewed | retrying | stopped | gone
    attempts: int = 0  # broker calls
    renewals: int = 0
    failures: int = 0  # consecutive
    retry_delays: list[float] = field(default_factory=list)
    retry_afters: list[float | None] = field(default_factory=list)
    last_error: str = ""
    retry_at: float | None = None
    retry_fingerprint: str | None = None
    not_before: float = 0.0

    def reset_backoff(self) -> None:
        self.failures, self.retry_at, self.retry_fingerprint = 0, None, None


def _fmt_time(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


class CasaTokenRenewal(LoggingConfigurable):
    """Renews the notebook's facility token files before they expire.

    Settings under ``c.CasaTokenRenewal`` (Jupyter server config, or ``casa-hub renew-tokens``
    options). The hub credential is read from ``$JUPYTERHUB_API_TOKEN``, never from config.
    """

    token_dir = Unicode(config=True, help="Directory with one ``<grant>.token`` file per grant. Default: $CASA_TOKEN_DIR.")

    @default("token_dir")
    def _default_token_dir(self) -> str:
        return os.environ.get("CASA_TOKEN_DIR", "")

    api_url = Unicode(config=True, help="The hub's API URL. Default: $JUPYTERHUB_API_URL.")

    @default("api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    renew_fraction = Float(
        2 / 3, config=True,
        help="Renew a token once this fraction of its lifetime (exp - iat) has passed; between 0 and 1.",
    )

    @validate("renew_fraction")
    def _check_fraction(self, proposal: dict) -> float:
        if not 0 < proposal["value"] < 1:
            raise TraitError(f"CasaTokenRenewal.renew_fraction must be between 0 and 1, not {proposal['value']}")
        return proposal["value"]

    retry_initial = Float(5.0, config=True, help="First retry delay (s) after a failed renewal; doubles per failure.")
    retry_max = Float(300.0, config=True, help="Longest retry delay (s), unless the hub's Retry-After asks for more.")
    retry_jitter = Float(
        0.25, config=True, help="Random shortening of each retry delay, as a fraction (0: none, 1: up to all of it).",
    )

    @validate("retry_jitter")
    def _check_jitter(self, proposal: dict) -> float:
        if not 0 <= proposal["value"] <= 1:
            raise TraitError(f"CasaTokenRenewal.retry_jitter must be between 0 and 1, not {proposal['value']}")
        return proposal["value"]

    request_timeout = Float(20.0, config=True, help="Timeout (s) of one call to the hub's token broker.")
    read_only_recheck = Float(
        90.0,
        config=True,
        help="""With a read-only token directory (a Kubernetes Secret mount the hub updates), how long
        (s) to wait after a renewal for the new file to appear before asking again.""",
    )

    rescan_interval = Float(30.0, config=True, help="How often (s) the token directory is looked at for new token files.")

    def __init__(
        self,
        *,
        api_token: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self._api_token = os.environ.get("JUPYTERHUB_API_TOKEN", "") if api_token is None else api_token
        self.clock, self.sleep, self.rand = clock, sleep, rand
        self.states: dict[str, GrantState] = {}

    # ---- one grant ---------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the agent cannot run, or None."""
        if not self.token_dir:
            return "no token directory (CASA_TOKEN_DIR is not set)"
        if not self.api_url or not self._api_token:
            return "no hub to ask (JUPYTERHUB_API_URL or JUPYTERHUB_API_TOKEN is not set)"
        return None

    def _write(self, st: GrantState, token: str) -> bool:
        """Replace the token file; False when the directory is a read-only mount (a Kubernetes
        Secret) that the hub updates itself after each broker call."""
        try:
            write_token_file(st.path, token)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not os.access(st.path.parent, os.W_OK):
                return False
            raise
        return True

    def state(self, grant: str) -> GrantState:
        if grant not in self.states:
            self.states[grant] = GrantState(grant, Path(self.token_dir) / token_file_name(grant))
        return self.states[grant]

    def due_at(self, st: GrantState, times: TokenTimes) -> float:
        """When the next broker call for this grant should happen."""
        if st.retry_at is not None and st.retry_fingerprint == times.fingerprint:
            return st.retry_at
        st.reset_backoff()  # first try, or someone else replaced the file meanwhile
        return max(renewal_time(times.iat, times.exp, self.renew_fraction), st.not_before)

    async def renew(self, grant: str, times: TokenTimes | None = None) -> str:
        """One renewal attempt: "renewed", "retry" (file kept, ``retry_at`` set), "stopped" or "gone"."""
        st = self.state(grant)
        times = times or read_token_times(st.path)
        if times is None:
            st.status = "gone"
            return "gone"
        st.attempts += 1
        try:
            token = await request_token(
                self.api_url, self._api_token, grant, self.request_timeout, self.clock(), hub_ssl_options()
            )
            delivered_by_hub = not self._write(st, token)
        except GrantRefused as e:
            st.status, st.last_error = "stopped", str(e)
            self.log.error(
                "casa token renewal: the hub refused to renew grant %r (%s); no longer renewing %s, "
                "whose current token expires at %s", grant, e, st.path, _fmt_time(times.exp),
            )
            return "stopped"
        except (BrokerUnavailable, OSError) as e:
            now = self.clock()
            retry_after = getattr(e, "retry_after", None)
            delay = retry_delay(
                st.failures, now=now, expires_at=times.exp, initial=self.retry_initial,
                maximum=self.retry_max, jitter=self.retry_jitter, rand=self.rand(), retry_after=retry_after,
            )
            st.failures += 1
            st.retry_delays.append(delay)
            st.retry_afters.append(retry_after)
            st.retry_at, st.retry_fingerprint = now + delay, times.fingerprint
            st.status = "retrying"
            st.last_error = str(e) if isinstance(e, BrokerError) else f"cannot write {st.path}: {e.strerror}"
            left = times.exp - now
            if not times.readable:
                validity = "the current file holds no readable token"
            elif left > 0:
                validity = f"the current token stays in place, valid for {left:.0f} s more"
            else:
                validity = "the current token has EXPIRED"
            self.log.warning(
                "casa token renewal: could not renew %r: %s; %s; retry %d in %.1f s",
                grant, st.last_error, validity, st.failures, delay,
            )
            return "retry"
        new_iat, new_exp, jti = token_times(token)
        now = self.clock()
        st.reset_backoff()
        st.renewals += 1
        st.status, st.last_error = "renewed", ""
        st.not_before = now + MIN_RENEW_INTERVAL
        if delivered_by_hub:
            # the file changes when the hub's update reaches the mount (kubelet sync): look again later
            st.not_before = now + self.read_only_recheck
            self.log.info("casa token renewal: renewed %r (jti=%s); %s is read-only, the hub delivers the "
                          "new token to it", grant, jti, st.path.parent)
            return "renewed"
        self.log.info(
            "casa token renewal: renewed %r in %s (jti=%s, expires %s, next renewal at %s)",
            grant, st.path, jti, _fmt_time(new_exp),
            _fmt_time(renewal_time(new_iat, new_exp, self.renew_fraction)),
        )
        return "renewed"

    async def keep_fresh(self, grant: str) -> None:
        """Renew one grant's file for as long as it exists and the hub allows the grant."""
        st = self.state(grant)
        st.status = "scheduled"
        self.log.info("casa token renewal: watching %s", st.path)
        while True:
            times = read_token_times(st.path)
            if times is None:
                st.status = "gone"
                self.log.info("casa token renewal: %s was removed; no longer renewing %r", st.path, grant)
                return
            due = self.due_at(st, times)
            now = self.clock()
            if now < due:
                await self.sleep(min(due - now, MAX_SLEEP))
                continue
            if not times.readable and st.failures == 0:
                self.log.warning("casa token renewal: %s holds no readable token; renewing it now", st.path)
            if await self.renew(grant, times) in ("stopped", "gone"):
                return

    # ---- all grants ----------------------------------------------------------------------------

    async def run_once(self, force: bool = False, attempts: int = 5) -> dict[str, str]:
        """Renew each token that is due (every token if ``force``), retrying up to ``attempts``
        times with the same backoff; ``{grant: outcome}`` with outcome "renewed", "not due",
        "failed" (old file kept), "stopped" or "gone"."""
        results: dict[str, str] = {}
        for grant in grant_files(Path(self.token_dir)):
            st = self.state(grant)
            times = read_token_times(st.path)
            if times is None:
                results[grant] = "gone"
                continue
            if not force and self.clock() < self.due_at(st, times):
                results[grant] = "not due"
                continue
            outcome = "retry"
            for attempt in range(max(1, attempts)):
                if attempt:
                    await self.sleep(st.retry_delays[-1])
                outcome = await self.renew(grant, times)
                if outcome != "retry":
                    break
            results[grant] = "failed" if outcome == "retry" else outcome
        return results

    async def run(self) -> None:
        """Keep every token file fresh until cancelled; new files are picked up every
        ``rescan_interval`` seconds. Grants the hub refused stay stopped."""
        self.log.info(
            "casa token renewal: keeping the tokens in %s fresh (renewal at %.0f%% of their lifetime)",
            self.token_dir, 100 * self.renew_fraction,
        )
        tasks: dict[str, asyncio.Task] = {}
        missing_logged = False
        try:
            while True:
                token_dir = Path(self.token_dir)
                if not token_dir.is_dir() and not missing_logged:
                    self.log.warning("casa token renewal: %s does not exist (yet)", token_dir)
                missing_logged = not token_dir.is_dir()
                for grant in grant_files(token_dir):
                    task = tasks.get(grant)
                    if self.state(grant).status == "stopped" or (task and not task.done()):
                        continue
                    if task and task.done() and not task.cancelled() and task.exception():
                        self.log.error("casa token renewal: %r stopped unexpectedly: %s; restarting",
                                       grant, redact(repr(task.exception())))
                    tasks[grant] = asyncio.create_task(self.keep_fresh(grant), name=f"casa-renew-{grant}")
                await self.sleep(self.rescan_interval)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
