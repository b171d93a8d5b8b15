"""The facility the casa_hub side of the benchmarks configures: four grants and four integrations.

``apply(c)`` sets them on a traitlets config object: the hub's (``hub_config_casa.py``) or the
in-process one of ``bench_spawn_prep``. Endpoints are names under ``.invalid``: the integrations
only write them into env vars and config files, nothing contacts them.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

GROUP = "physicists"

GRANTS: dict[str, dict[str, Any]] = {
    "xcache": {"audience": "https://xcache.bench.invalid", "scopes": ["storage.read:/user/{username}"],
               "lifetime": 1200, "groups": [GROUP]},
    "htcondor": {"audience": "https://condor.bench.invalid",
                 "scopes": ["compute.read", "compute.create", "compute.modify", "compute.cancel"],
                 "lifetime": 3600, "groups": [GROUP]},
    "servicex": {"audience": "https://servicex.bench.invalid", "scopes": ["servicex.submit"],
                 "lifetime": 1200, "groups": [GROUP]},
    "mlflow": {"audience": "https://mlflow.bench.invalid", "scopes": ["mlflow.write"],
               "lifetime": 1200, "groups": [GROUP]},
}

INTEGRATIONS = [
    "casa_hub.integrations.XCacheIntegration",
    "casa_hub.integrations.ServiceXIntegration",
    "casa_hub.integrations.HTCondorIntegration",
    "casa_hub.integrations.MLflowIntegration",
]


def apply(c: Any) -> None:
    """Grants, integrations and their endpoints on the config object ``c``."""
    c.CasaTokenIssuer.grants = GRANTS
    c.CasaSpawnerMixin.integration_classes = INTEGRATIONS
    c.CasaSpawnerMixin.renewal_agent = False  # no notebook runs: nothing would load the agent
    c.XCacheIntegration.endpoint = "roots://xcache.bench.invalid:1094"
    c.XCacheIntegration.ca_dir = "/etc/grid-security/certificates"
    c.ServiceXIntegration.endpoint = "https://servicex.bench.invalid"
    c.HTCondorIntegration.collector_host = "cm.bench.invalid:9618"
    c.HTCondorIntegration.schedd_host = "submit.bench.invalid"
    c.MLflowIntegration.tracking_uri = "https://mlflow.bench.invalid"


def provider_auth_state(username: str) -> dict[str, Any]:
    """An auth_state shaped and sized like the one ``CasaOIDCAuthenticator`` stores after a login
    (provider tokens are random strings; the access token counts as valid for an hour, so no
    provider refresh happens), without facility tokens."""
    now = int(time.time())
    return {
        "access_token": secrets.token_urlsafe(32), "refresh_token": secrets.token_urlsafe(32),
        "id_token": secrets.token_urlsafe(600), "scope": ["openid", "profile", "email", "groups"],
        "token_response": {"token_type": "Bearer", "expires_in": 3600},
        "oauth_user": {"sub": username, "preferred_username": username, "groups": [GROUP]},
        "casa_oidc": {"access_expires_at": now + 3600, "refreshed_at": now, "generation": 0},
    }
