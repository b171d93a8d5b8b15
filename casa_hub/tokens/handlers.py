"""HTTP publication of the facility issuer: discovery document and JWKS.

These handlers are served by the hub under ``/hub/casa-issuer/`` (see
``CasaOIDCAuthenticator.get_handlers``), so XRootD, HTCondor and MLflow can fetch the keys
themselves. They carry no secrets and need no authentication.
"""

from __future__ import annotations

import json
from typing import Any

from tornado import web

from casa_hub.tokens.issuer import CasaTokenIssuer

ISSUER_PATH = "/casa-issuer"
CACHE_SECONDS = 300


class _PublicJSONHandler(web.RequestHandler):
    def initialize(self, issuer: CasaTokenIssuer) -> None:
        self.issuer = issuer

    def document(self) -> dict[str, Any]:
        raise NotImplementedError

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", f"public, max-age={CACHE_SECONDS}")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.finish(json.dumps(self.document()))


class DiscoveryHandler(_PublicJSONHandler):
    def document(self) -> dict[str, Any]:
        return self.issuer.discovery()


class JWKSHandler(_PublicJSONHandler):
    def document(self) -> dict[str, Any]:
        return self.issuer.jwks()


def issuer_handlers(issuer: CasaTokenIssuer) -> list[tuple[str, type, dict[str, Any]]]:
    """Handlers to add to the hub (paths are relative to the hub prefix)."""
    kw = {"issuer": issuer}
    return [
        (f"{ISSUER_PATH}/.well-known/openid-configuration", DiscoveryHandler, kw),
        (f"{ISSUER_PATH}/jwks.json", JWKSHandler, kw),
    ]
