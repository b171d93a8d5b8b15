"""Former path of ``casa_hub.integrations.mlflow.server_auth`` (MLflow auth configs name it)."""

from casa_hub.integrations.mlflow.server_auth import authenticate_request

__all__ = ["authenticate_request"]
