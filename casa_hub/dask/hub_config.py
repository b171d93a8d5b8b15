"""Former path of ``casa_hub.integrations.dask.gateway_service`` (hub configs import it)."""

from casa_hub.integrations.dask.gateway_service import (
    add_embedded_gateway,
    enable_gateway_access,
    gateway_available,
)

__all__ = ["add_embedded_gateway", "enable_gateway_access", "gateway_available"]
