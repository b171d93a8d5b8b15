"""Prometheus metrics of casa_hub, in the registry JupyterHub serves at ``/hub/metrics``.

* ``casa_hub_logins_total{outcome}``: finished sign-ins; ``outcome`` is ``success`` or the
  failure reason (``not_allowed``, ``bad_id_token``, ``no_username``, ``unsafe_username``,
  ``provider_refused``, ``provider_unreachable``, ``expired_login``, ...).
* ``casa_hub_oidc_refresh_duration_seconds{outcome}``: provider token refreshes
  (``ok``, ``rejected``, ``provider_unavailable``).
* ``casa_hub_tokens_minted_total{grant}``: facility tokens signed by the issuer.
* ``casa_hub_token_lifetime_seconds{grant}``: lifetime (``exp - iat``) of the tokens minted, i.e. when
  they expire.
* ``casa_hub_spawn_prepare_duration_seconds{outcome}``: what casa_hub adds to a spawn (tokens, services,
  files or Secret), ``ok`` or ``failed``.
* ``casa_hub_dask_cluster_seconds{phase}``: Dask cluster creation: ``submit`` (the spawn waits for it),
  ``running`` (from submission until the cluster runs), ``failed``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LOGINS = Counter(
    "casa_hub_logins_total",
    "Sign-ins through the OIDC provider, by outcome (success or the failure reason)",
    ["outcome"],
)

REFRESH_DURATION = Histogram(
    "casa_hub_oidc_refresh_duration_seconds",
    "Time to refresh a user's provider tokens, by outcome",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

TOKENS_MINTED = Counter(
    "casa_hub_tokens_minted_total",
    "Facility tokens signed by the issuer, by grant",
    ["grant"],
)


TOKEN_LIFETIME = Histogram(
    "casa_hub_token_lifetime_seconds",
    "Lifetime (exp - iat) of minted facility tokens, by grant",
    ["grant"],
    buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600),
)

SPAWN_PREPARE = Histogram(
    "casa_hub_spawn_prepare_duration_seconds",
    "Time casa_hub adds to a spawn (tokens, services, files or Secret), by outcome",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

DASK_CLUSTER = Histogram(
    "casa_hub_dask_cluster_seconds",
    "Dask cluster creation at spawn: submit (the spawn waits), running (until it runs), failed",
    ["phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


def count_login(outcome: str) -> None:
    LOGINS.labels(outcome=outcome).inc()


def observe_refresh(outcome: str, seconds: float) -> None:
    REFRESH_DURATION.labels(outcome=outcome).observe(seconds)


def count_mint(grant: str, lifetime: float | None = None) -> None:
    TOKENS_MINTED.labels(grant=grant).inc()
    if lifetime is not None:
        TOKEN_LIFETIME.labels(grant=grant).observe(lifetime)


def observe_spawn_prepare(outcome: str, seconds: float) -> None:
    SPAWN_PREPARE.labels(outcome=outcome).observe(seconds)


def observe_dask_cluster(phase: str, seconds: float) -> None:
    DASK_CLUSTER.labels(phase=phase).observe(seconds)
