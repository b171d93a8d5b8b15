"""Facility tokens for Dask jobs in a batch system, shared by the gateway backends and the
dask-jobqueue clusters.

The rule: **every job gets its own storage token, minted when the job is submitted, whose lifetime
covers the job's whole walltime** (plus a margin). The batch system enforces the walltime (Slurm
``--time``, HTCondor ``allowed_job_duration``), and a job that waited so long in the queue that its
token could no longer cover a full walltime is not started (Slurm ``--deadline``; HTCondor
``requirements`` and ``periodic_remove``). A worker therefore never holds an expired token.

Tokens reach jobs only as files (mode 0600) referenced by path (``BEARER_TOKEN_FILE``): never in
a command line, a job's environment attributes or a log line.

``GatewayTokenMinter`` mints them inside the Dask Gateway process with the facility issuer's keys
(``c.CasaTokenIssuer.*`` in the gateway's configuration: the same ``issuer_url``, ``key_dir`` and
the grants the gateway may mint). Every mint writes the issuer's audit line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import jwt
from traitlets import Bool, Integer
from traitlets.config import LoggingConfigurable

from casa_hub.tokens.issuer import CasaTokenIssuer, IssuerError, MintedToken

#: name of a job's storage token file (in its staging directory or sandbox)
STORAGE_TOKEN_FILE = "casa-storage.token"
#: seconds a token must outlive the walltime: clock skew, start-up, the batch system's own slack
DEFAULT_MARGIN = 300

_WALLTIME = re.compile(r"(?:(?P<days>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)")


def token_renewal_trait() -> Bool:
    """The ``token_renewal`` setting of a backend's cluster config (the same on every backend)."""
    return Bool(
        False,
        config=True,
        help="""True: the workers' storage tokens are renewed by their owner's client over Dask
        (``casa_hub.dask.worker_renewal``, started by ``casa_hub.dask.get_client()``), so a worker's
        walltime may exceed the storage grant's lifetime and a job is not held back by its token's
        expiry; the first token is still minted at submission. False (the fallback guarantee): every
        worker's token must cover its whole walltime, and a job that waited too long is not started.""",
    )


class TokenLifetimeError(ValueError):
    """A token cannot cover a job's walltime; the message says which setting to change."""


def parse_walltime(value: str | int | float) -> int:
    """Seconds from a walltime: a number of seconds, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError(f"bad walltime {value!r}")
    if isinstance(value, int | float):
        seconds = int(value)
    else:
        text = str(value).strip()
        if text.isdigit():
            seconds = int(text)
        else:
            m = _WALLTIME.fullmatch(text)
            if not m:
                raise ValueError(f"bad walltime {value!r}: use seconds, MM:SS, HH:MM:SS or D-HH:MM:SS")
            seconds = (int(m["days"] or 0) * 86400 + int(m["h"] or 0) * 3600 + int(m["m"]) * 60
                       + int(m["s"]))
    if seconds <= 0:
        raise ValueError(f"bad walltime {value!r}: must be positive")
    return seconds


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24), as Slurm's ``--time`` accepts it."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def token_expiry(token: str) -> int:
    """The ``exp`` claim of a JWT (unverified: only to schedule around it)."""
    try:
        return int(jwt.decode(token, options={"verify_signature": False})["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        raise TokenLifetimeError("the storage token is not a JWT with an exp claim") from None


def check_covers(expires_at: float, walltime: int, grant: str, margin: int = DEFAULT_MARGIN,
                 now: float | None = None) -> None:
    """Raise TokenLifetimeError unless a job started now and running ``walltime`` seconds ends
    ``margin`` seconds before ``expires_at``."""
    now = time.time() if now is None else now
    left = int(expires_at - now)
    if left < walltime + margin:
        raise TokenLifetimeError(
            f"a {grant!r} token lives {left} s from now, but a job with a walltime of "
            f"{format_walltime(walltime)} needs {walltime + margin} s (walltime + {margin} s margin): "
            f"shorten the walltime or give the {grant!r} grant a longer lifetime "
            f"(at most 6 hours; e.g. a dedicated worker grant)"
        )


def slurm_time(epoch: float) -> str:
    """An absolute time as Slurm reads it (``--deadline``; local time, as slurmctld's)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def latest_start(expires_at: float, walltime: int, margin: int = DEFAULT_MARGIN) -> int:
    """The last epoch second a job may start and still end (walltime) before its token expires."""
    return int(expires_at) - walltime - margin


class GatewayTokenMinter(LoggingConfigurable):
    """Mints a user's facility tokens for the jobs a Dask Gateway backend submits.

    Configure the issuer with ``c.CasaTokenIssuer.issuer_url``, ``key_dir`` (a read-only copy of
    the hub's issuer keys, e.g. the same Kubernetes Secret) and ``grants`` (only those the gateway
    mints: the compute grant and the worker storage grant), in the gateway's configuration file.
    The user's groups come from the gateway's authenticator (JupyterHub), so grant restrictions
    apply exactly as in the hub.
    """

    margin = Integer(
        DEFAULT_MARGIN,
        config=True,
        help="""Seconds a worker's storage token must outlive the worker's walltime.""",
    )

    _issuer: CasaTokenIssuer | None = None

    @property
    def issuer(self) -> CasaTokenIssuer:
        if self._issuer is None:
            self._issuer = CasaTokenIssuer(parent=self, log=self.log)
        return self._issuer

    def grant_lifetime(self, grant: str) -> int:
        """Seconds the tokens of ``grant`` live; IssuerError if the gateway has no such grant."""
        spec = self.issuer.parsed_grants.get(grant)
        if spec is None:
            raise IssuerError(
                f"the gateway's CasaTokenIssuer.grants has no grant {grant!r}; known: "
                f"{sorted(self.issuer.parsed_grants)}"
            )
        return spec.lifetime

    def check_grant_covers(self, grant: str, walltime: int) -> None:
        """TokenLifetimeError if freshly minted ``grant`` tokens cannot cover ``walltime``."""
        lifetime = self.grant_lifetime(grant)
        check_covers(lifetime, walltime, grant, self.margin, now=0)

    def check_allowed(self, grant: str, groups: Iterable[str]) -> None:
        """IssuerError unless members of ``groups`` may receive ``grant`` (checked at cluster creation,
        so a user learns it at once rather than when the first job is submitted)."""
        self.grant_lifetime(grant)  # the gateway knows the grant
        if grant not in self.issuer.grants_for(groups):
            raise IssuerError(f"your groups do not allow {grant!r} tokens, which these Dask jobs need")

    def mint(self, username: str, groups: Iterable[str], grant: str) -> MintedToken:
        """A fresh token of ``grant`` for ``username`` (IssuerError if the groups do not allow it)."""
        return self.issuer.mint(username, grant, list(groups))
