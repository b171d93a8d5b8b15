"""XCache: data reads through the facility's cache with the user's storage token."""

from __future__ import annotations

from traitlets import Unicode

from .base import Contribution, Integration, SpawnContext


class XCacheIntegration(Integration):
    """Points WLCG bearer-token discovery (``BEARER_TOKEN_FILE``) at the user's storage token."""

    name = "xcache"

    grant = Unicode("xcache", config=True, help="Issuer grant holding the storage token.")

    endpoint = Unicode(
        "",
        config=True,
        help="The cache's URL, e.g. ``root://xcache.example.org:1094``; exported as ``CASA_XCACHE_URL``.",
    )

    def grants(self) -> list[str]:
        return [self.grant]

    def contribute(self, ctx: SpawnContext) -> Contribution:
        env: dict[str, str] = {}
        if self.grant in ctx.tokens:
            env["BEARER_TOKEN_FILE"] = ctx.token_path(self.grant)
        if self.endpoint:
            env["CASA_XCACHE_URL"] = self.endpoint
        return Contribution(env=env)
