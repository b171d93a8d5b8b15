"""Prometheus metrics of casa_hub, in the registry JupyterHub serves at ``/hub/metrics``.

* ``casa_hub_logins_total{outcome}``: finished sign-ins; ``outcome`` is ``success`` or the
  failure reason (``not_allowed``, ``bad_id_token``, ``no_username``, ``unsafe_username``,
  ``provider_refused``, ``provider_unreachable``, ``expired_login``, ...).
* ``casa_hub_oidc_refresh_duration_seconds{outcome}``: provider token refreshes
  (``ok``, ``rejected``, ``provider_unavailable``).
* ``casa_hub_tokens_minted_total{grant}``: facility tokens signed by the issuer.
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


def count_login(outcome: str) -> None:
    LOGINS.labels(outcome=outcome).inc()


def observe_refresh(outcome: str, seconds: float) -> None:
    REFRESH_DURATION.labels(outcome=outcome).observe(seconds)


def count_mint(grant: str) -> None:
    TOKENS_MINTED.labels(grant=grant).inc()
