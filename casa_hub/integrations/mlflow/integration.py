"""MLflow: experiment tracking on the facility's MLflow server with the user's facility token.

The notebook gets the server's URL (``MLFLOW_TRACKING_URI``) and the path of the token file
(``CASA_MLFLOW_TOKEN_FILE``), never the token itself. casa_hub's request-header provider
(``casa_hub.integrations.mlflow.client``, registered with MLflow's ``mlflow.request_header_provider`` entry point)
reads that file on every request, so a token the renewal agent replaced is used at once. The server
checks the token with ``casa_hub.integrations.mlflow.server_auth``.
"""

from __future__ import annotations

from traitlets import Unicode

from casa_hub.integrations.base import Contribution, Integration, SpawnContext
from casa_hub.integrations.checks import url_problem

#: env var with the token file the header provider reads
TOKEN_FILE_ENV = "CASA_MLFLOW_TOKEN_FILE"
#: env var with the only tracking server the header provider sends the token to
TRACKING_URI_ENV = "CASA_MLFLOW_TRACKING_URI"


class MLflowIntegration(Integration):
    """Points the MLflow client at the facility's tracking server, authenticated by a facility token."""

    name = "mlflow"

    grant = Unicode(
        "mlflow",
        config=True,
        help="""Issuer grant (``c.CasaTokenIssuer.grants``) whose token authenticates to the MLflow
        server; its audience must be one the server accepts (``CASA_MLFLOW_AUDIENCE``). Users
        without this grant get no MLflow settings.""",
    )

    tracking_uri = Unicode(
        "",
        config=True,
        help="""URL of the facility's MLflow tracking server, e.g. ``https://mlflow.example.org``
        (required). Exported as ``MLFLOW_TRACKING_URI`` and ``CASA_MLFLOW_TRACKING_URI``; the
        facility token is sent only to this server.""",
    )

    def configuration_problem(self) -> str | None:
        return url_problem(f"{type(self).__name__}.tracking_uri", self.tracking_uri, ("https", "http"))

    def required_grant(self) -> str:
        return self.grant

    def service_grants(self) -> list[str]:
        return [self.grant]

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        return Contribution(env={
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            TRACKING_URI_ENV: self.tracking_uri,
            TOKEN_FILE_ENV: ctx.token_path(self.grant),
        })
