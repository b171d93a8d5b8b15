"""HTCondor: client configuration so ``condor_submit`` and the Python bindings use the user's
own compute token.

The notebook gets ``condor_config`` in its config directory and ``CONDOR_CONFIG`` pointing at it.
The file names the pool (``COLLECTOR_HOST``) and the submit node (``SCHEDD_HOST``), restricts
client authentication to SciTokens and sets ``SCITOKENS_FILE`` to the compute grant's token
file. Without ``SCITOKENS_FILE`` HTCondor would fall back to WLCG bearer-token discovery, i.e.
``BEARER_TOKEN_FILE``, which is the storage token. The file holds paths only, never a token.
"""

from __future__ import annotations

import re
from typing import Any

from traitlets import Dict, List, Unicode

from casa_hub.integrations.base import Contribution, Integration, SpawnContext
from casa_hub.integrations.checks import host_problem, line_problem, name_problem, path_problem

CONFIG_FILE = "condor_config"
_METHOD = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
#: macros this integration writes itself; ``extra_config`` may not override them
MANAGED = frozenset({
    "COLLECTOR_HOST", "SCHEDD_HOST", "SCITOKENS_FILE", "SEC_CLIENT_AUTHENTICATION_METHODS",
    "SEC_DEFAULT_AUTHENTICATION_METHODS", "SEC_CLIENT_AUTHENTICATION", "AUTH_SSL_CLIENT_CAFILE",
    "AUTH_SSL_CLIENT_CADIR",
})


def _value_problem(setting: str, value: str) -> str | None:
    """Why ``value`` cannot be the value of one HTCondor configuration line, or None."""
    if value.endswith("\\"):  # a trailing backslash continues the line
        return f"{setting} {value!r} may not end with a backslash"
    return line_problem(setting, value)


class HTCondorIntegration(Integration):
    """A client ``condor_config`` for the facility's HTCondor pool and the user's compute token."""

    name = "htcondor"
    title = "HTCondor"

    grant = Unicode(
        "htcondor",
        config=True,
        help="""Issuer grant holding the compute token (``compute.*`` scopes) the HTCondor client
        presents with the SCITOKENS method; its file becomes ``SCITOKENS_FILE``. Users without
        this grant get no HTCondor configuration.""",
    )

    collector_host = Unicode(
        "",
        config=True,
        help="The pool's central manager, ``host`` or ``host:port`` (required): ``COLLECTOR_HOST``.",
    )

    schedd_host = Unicode(
        "",
        config=True,
        help="""Name of the schedd (submit node) users submit to: ``SCHEDD_HOST``. Empty: the
        client looks for a schedd on the notebook's own host, which a notebook rarely has.""",
    )

    authentication_methods = List(
        Unicode(),
        default_value=["SCITOKENS"],
        config=True,
        help="""Client authentication methods, in order: ``SEC_CLIENT_AUTHENTICATION_METHODS``
        and ``SEC_DEFAULT_AUTHENTICATION_METHODS``. Authentication is REQUIRED, so a client
        never falls back to an unauthenticated connection.""",
    )

    ca_file = Unicode(
        "",
        config=True,
        help="""CA bundle in the notebook's filesystem for verifying the schedd's and
        collector's TLS certificates (SciTokens authentication runs over TLS):
        ``AUTH_SSL_CLIENT_CAFILE``. Empty: HTCondor's default.""",
    )

    ca_dir = Unicode(
        "",
        config=True,
        help="Directory of hashed CA certificates, as ``ca_file``: ``AUTH_SSL_CLIENT_CADIR``.",
    )

    extra_config = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Further client configuration macros, ``NAME -> value`` (e.g. ``UID_DOMAIN``,
        ``FILESYSTEM_DOMAIN``), written after the managed ones. Values are single lines; the
        macros this integration manages cannot be overridden here; no credentials.""",
    )

    def configuration_problem(self) -> str | None:
        where = type(self).__name__
        if not self.grant:
            return f"{where}.grant is empty: the client needs a compute token for SCITOKENS_FILE"
        if problem := host_problem(f"{where}.collector_host", self.collector_host):
            return problem
        if self.schedd_host and (problem := host_problem(f"{where}.schedd_host", self.schedd_host)):
            return problem
        if not self.authentication_methods:
            return f"{where}.authentication_methods is empty"
        for method in self.authentication_methods:
            if not _METHOD.fullmatch(method):
                return f"{where}.authentication_methods has an invalid method {method!r}"
        for setting, value in (("ca_file", self.ca_file), ("ca_dir", self.ca_dir)):
            if value and (problem := path_problem(f"{where}.{setting}", value)
                          or _value_problem(f"{where}.{setting}", value)):
                return problem
        for key, value in self.extra_config.items():
            if problem := name_problem(f"{where}.extra_config", key):
                return problem
            if key.upper() in MANAGED:
                return f"{where}.extra_config may not set {key}: use the {where} setting for it"
            if problem := _value_problem(f"{where}.extra_config[{key!r}]", value):
                return problem
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "endpoint": self.schedd_host or self.collector_host}

    def required_grant(self) -> str:
        return self.grant

    def service_grants(self) -> list[str]:
        return [self.grant]

    def config_macros(self, ctx: SpawnContext) -> dict[str, str]:
        """The macros of the client configuration, in order."""
        methods = ", ".join(self.authentication_methods)
        macros = {"COLLECTOR_HOST": self.collector_host}
        if self.schedd_host:
            macros["SCHEDD_HOST"] = self.schedd_host
        macros.update({
            "SEC_CLIENT_AUTHENTICATION": "REQUIRED",
            "SEC_CLIENT_AUTHENTICATION_METHODS": methods,
            "SEC_DEFAULT_AUTHENTICATION_METHODS": methods,
            "SCITOKENS_FILE": ctx.token_path(self.grant),
        })
        if self.ca_file:
            macros["AUTH_SSL_CLIENT_CAFILE"] = self.ca_file
        if self.ca_dir:
            macros["AUTH_SSL_CLIENT_CADIR"] = self.ca_dir
        macros.update(self.extra_config)
        return macros

    def condor_config(self, ctx: SpawnContext) -> str:
        lines = [
            "# HTCondor client configuration for the facility's pool, written by casa_hub at",
            "# server start. SCITOKENS_FILE is the user's compute token (renewed in place).",
        ]
        lines += [f"{name} = {value}" for name, value in self.config_macros(ctx).items()]
        return "\n".join(lines) + "\n"

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        return Contribution(
            env={"CONDOR_CONFIG": f"{ctx.config_dir}/{CONFIG_FILE}"},
            files={CONFIG_FILE: self.condor_config(ctx).encode()},
        )
