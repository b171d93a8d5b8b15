"""XCache: data reads through the facility's cache with the user's storage token."""

from __future__ import annotations

import re

from traitlets import Dict, Unicode

from casa_hub.integrations.base import Contribution, Integration, SpawnContext
from casa_hub.integrations.checks import line_problem, name_problem, path_problem, url_problem

CACHE_SCHEMES = ("root", "roots", "xroot", "xroots", "https", "davs", "http")
#: XRootD client settings a site may export: XrdCl's ``XRD_*`` and the security layer's ``XrdSec*``
_CLIENT_SETTING = re.compile(r"XRD_[A-Z0-9_]{1,64}|XrdSec[A-Za-z0-9_]{1,64}")


class XCacheIntegration(Integration):
    """XRootD client settings for reading through the facility's XCache.

    WLCG bearer-token discovery (``BEARER_TOKEN_FILE``) points at the user's storage token, which
    the XRootD client's ``ztn`` security plugin (and davix, gfal2, curl wrappers) send to the cache.
    """

    name = "xcache"
    title = "XCache"

    grant = Unicode("xcache", config=True, help="Issuer grant holding the storage token.")

    endpoint = Unicode(
        "",
        config=True,
        help="The cache's URL, e.g. ``roots://xcache.example.org:1094``; exported as ``CASA_XCACHE_URL``.",
    )

    ca_dir = Unicode(
        "",
        config=True,
        help="""Directory of hashed CA certificates in the notebook's filesystem (e.g.
        ``/etc/grid-security/certificates``), exported as ``X509_CERT_DIR``: the XRootD client
        verifies the cache's TLS certificate (``roots://``, and ``root://`` with ztn) against it.
        Empty: not exported (the image's default applies).""",
    )

    plugin_conf_dir = Unicode(
        "",
        config=True,
        help="""Directory of XRootD client plugin configuration files in the notebook's
        filesystem (e.g. one enabling the XrdClHttp plugin for ``https://`` and ``davs://`` URLs),
        exported as ``XRD_PLUGINCONFDIR``. Empty: not exported.""",
    )

    client_settings = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Further XRootD client settings exported as environment variables: names of XrdCl
        settings (``XRD_REQUESTTIMEOUT``, ``XRD_CONNECTIONRETRY``, ...) or of the security layer
        (``XrdSecPROTOCOL``, e.g. ``"ztn"`` to send only the token). Values are plain settings,
        never credentials.""",
    )

    def configuration_problem(self) -> str | None:
        where = type(self).__name__
        if self.endpoint:
            problem = url_problem(f"{where}.endpoint", self.endpoint, CACHE_SCHEMES)
            if problem:
                return problem
        for setting, value in (("ca_dir", self.ca_dir), ("plugin_conf_dir", self.plugin_conf_dir)):
            if value and (problem := path_problem(f"{where}.{setting}", value)):
                return problem
        for key, value in self.client_settings.items():
            problem = name_problem(f"{where}.client_settings", key, _CLIENT_SETTING)
            if problem:
                return f"{problem}: only XRD_* and XrdSec* settings"
            if key == "XRD_PLUGINCONFDIR":
                return f"{where}.client_settings: set {key} with {where}.plugin_conf_dir"
            if problem := line_problem(f"{where}.client_settings[{key!r}]", value):
                return problem
        return None

    def service_grants(self) -> list[str]:
        return [self.grant] if self.grant else []

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        # the token is optional: public data can be read without one
        env: dict[str, str] = dict(self.client_settings)
        if self.grant and self.grant in ctx.tokens:
            env["BEARER_TOKEN_FILE"] = ctx.token_path(self.grant)
        if self.endpoint:
            env["CASA_XCACHE_URL"] = self.endpoint
        if self.ca_dir:
            env["X509_CERT_DIR"] = self.ca_dir
        if self.plugin_conf_dir:
            env["XRD_PLUGINCONFDIR"] = self.plugin_conf_dir
        return Contribution(env=env)
