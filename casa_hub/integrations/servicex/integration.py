"""ServiceX: the facility's ServiceX endpoint, with the user's ServiceX token.

The notebook gets a ``servicex.yaml`` in its config directory and three env vars that the
client-side plugin ``casa_hub.integrations.servicex.client_auth`` reads. The plugin is loaded by the real
ServiceX client whenever ``servicex`` is imported; it makes the client

- find the generated ``servicex.yaml`` when the client's own search (``.servicex`` or
  ``servicex.yaml`` upward from the working directory, then in ``$HOME``) finds nothing, and
- send the ServiceX grant's token (re-read from its file, so renewed tokens are used) to the
  facility endpoint instead of the storage token that ``BEARER_TOKEN_FILE`` names, and no
  ``BEARER_TOKEN_FILE`` token to any other ServiceX endpoint.

``BEARER_TOKEN_FILE`` itself stays the storage token, for XRootD in the same process. The yaml
holds no token: the token lives in its own file, which the renewal agent keeps fresh.
"""

from __future__ import annotations

import json

from traitlets import Unicode

from casa_hub.integrations.base import Contribution, Integration, SpawnContext
from casa_hub.integrations.checks import line_problem, template_problem, url_problem

CONFIG_FILE = "servicex.yaml"
ENV_URL = "CASA_SERVICEX_URL"
ENV_CONFIG = "CASA_SERVICEX_CONFIG"
ENV_TOKEN_FILE = "CASA_SERVICEX_TOKEN_FILE"


def _yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value)


class ServiceXIntegration(Integration):
    """A ``servicex.yaml`` naming the facility's ServiceX, and the user's ServiceX token."""

    name = "servicex"
    title = "ServiceX"

    grant = Unicode(
        "servicex",
        config=True,
        help="""Issuer grant whose token the ServiceX client sends to the facility endpoint as
        its access token (``Authorization: Bearer``). Users without this grant get no ServiceX
        configuration. Empty: an endpoint that needs no token.""",
    )

    endpoint = Unicode(
        "",
        config=True,
        help="""The facility ServiceX's URL, e.g. ``https://servicex.example.org`` (required;
        the client appends ``/servicex/...``). Exported as ``CASA_SERVICEX_URL``.""",
    )

    endpoint_name = Unicode(
        "facility",
        config=True,
        help="""Name of the endpoint in ``servicex.yaml`` (``api_endpoints[].name`` and
        ``default-endpoint``), as used by ``deliver(..., servicex_name=...)``.""",
    )

    cache_path = Unicode(
        "~/.cache/servicex",
        config=True,
        help="""``cache_path`` in ``servicex.yaml``: where the client keeps its query cache and
        downloaded results. ``~`` is the user's home in the notebook; ``{username}`` expands.""",
    )

    def configuration_problem(self) -> str | None:
        where = type(self).__name__
        return (
            url_problem(f"{where}.endpoint", self.endpoint, ("https", "http"))
            or line_problem(f"{where}.endpoint_name", self.endpoint_name)
            or (f"{where}.endpoint_name is empty" if not self.endpoint_name.strip() else None)
            or line_problem(f"{where}.cache_path", self.cache_path)
            or template_problem(f"{where}.cache_path", self.cache_path)
        )

    def required_grant(self) -> str:
        return self.grant

    def service_grants(self) -> list[str]:
        return [self.grant] if self.grant else []

    def servicex_yaml(self, ctx: SpawnContext) -> str:
        """The client configuration; no token in it (see the module doc)."""
        name = _yaml_str(self.endpoint_name)
        lines = [
            "# The facility's ServiceX, written by casa_hub at server start. The token the client",
            f"# sends comes from ${ENV_TOKEN_FILE} (casa_hub's ServiceX client plugin), not from here.",
            "api_endpoints:",
            f"  - name: {name}",
            f"    endpoint: {_yaml_str(self.endpoint.rstrip('/'))}",
            f"default-endpoint: {name}",
        ]
        if self.cache_path:
            lines.append(f"cache_path: {_yaml_str(self.cache_path.format(username=ctx.username))}")
        return "\n".join(lines) + "\n"

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        env = {
            ENV_URL: self.endpoint.rstrip("/"),
            ENV_CONFIG: f"{ctx.config_dir}/{CONFIG_FILE}",
        }
        if self.grant:
            env[ENV_TOKEN_FILE] = ctx.token_path(self.grant)
        return Contribution(env=env, files={CONFIG_FILE: self.servicex_yaml(ctx).encode()})
