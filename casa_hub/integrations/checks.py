"""Setting checks shared by the integrations.

A service whose settings are wrong (a required endpoint missing, a malformed URL, a value that
would break the file it is written into) is *skipped*: it asks for no grant and contributes no
env var and no file, and the reason is logged once per server as a warning that names the setting.
The notebook still starts with every other service configured; the operator finds the reason in
the hub log. A service the user has no token for (their groups do not allow the grant) is also
left out, with an info line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from .base import Contribution, Integration, SpawnContext

#: names of configuration macros / environment variables we accept from site settings
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")


def url_problem(setting: str, value: str, schemes: Iterable[str]) -> str | None:
    """Why ``value`` is not a usable URL with one of ``schemes`` and a host, or None."""
    schemes = tuple(schemes)
    if not value:
        return f"{setting} is not set"
    if any(c.isspace() for c in value) or not value.isprintable():
        return f"{setting} {value!r} has spaces or control characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"{setting} {value!r} is not a valid URL: {e}"
    if parts.scheme not in schemes or not parts.hostname:
        return f"{setting} {value!r} must be a URL like {schemes[0]}://host:port"
    if parts.username or parts.password:
        return f"{setting} must not hold credentials (user:password@); use a grant or a file"
    return None


def host_problem(setting: str, value: str) -> str | None:
    """Why ``value`` is not ``host`` or ``host:port``, or None."""
    if not value:
        return f"{setting} is not set"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", value):
        return f"{setting} {value!r} must be a host name or host:port"
    return None


def line_problem(setting: str, value: str) -> str | None:
    """Why ``value`` cannot be written as one line of a config file or an env var, or None."""
    if not value.isprintable() or "\n" in value or "\r" in value:
        return f"{setting} {value!r} must be a single line of printable characters"
    return None


def name_problem(setting: str, name: str, pattern: re.Pattern[str] = _NAME) -> str | None:
    """Why ``name`` is not an acceptable setting name, or None."""
    if not pattern.fullmatch(name):
        return f"{setting} has an invalid name {name!r}"
    return None


def template_problem(setting: str, value: str) -> str | None:
    """Why ``value`` is not a template whose only placeholder is ``{username}``, or None."""
    try:
        value.format(username="user")
    except (KeyError, IndexError, ValueError) as e:
        return f"{setting} {value!r}: the only placeholder allowed is {{username}} ({e})"
    return None


def path_problem(setting: str, value: str) -> str | None:
    """Why ``value`` is not an absolute path (in the notebook's filesystem), or None."""
    if not value.startswith("/"):
        return f"{setting} {value!r} must be an absolute path"
    return line_problem(setting, value)


class CheckedIntegration(Integration):
    """An integration that checks its settings before it contributes anything.

    Subclasses implement ``configuration_problem`` (the reason the service cannot be configured,
    or None), ``service_grants`` and ``service_contribution``; ``grants`` and ``contribute`` then
    skip a disabled or misconfigured service. ``required_grant`` names the grant without whose
    token the service is useless (``""``: none).
    """

    _problem_checked = False
    _problem: str | None = None

    def configuration_problem(self) -> str | None:
        """Why this service cannot be configured with the current settings, or None."""
        return None

    def required_grant(self) -> str:
        """A grant whose token the user must have for this service to be configured; ``""``: none."""
        return ""

    def service_grants(self) -> list[str]:
        return []

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        return Contribution()

    @property
    def usable(self) -> bool:
        """Enabled and correctly configured; logs the reason (once) when it is not."""
        if not self.enabled:
            return False
        if not self._problem_checked:
            self._problem = self.configuration_problem()
            self._problem_checked = True
            if self._problem:
                self.log.warning(
                    "%s is enabled but not configured correctly, so notebooks get no %s settings: %s",
                    type(self).__name__, self.name, self._problem,
                )
        return self._problem is None

    def grants(self) -> list[str]:
        return self.service_grants() if self.usable else []

    def contribute(self, ctx: SpawnContext) -> Contribution:
        if not self.usable:
            return Contribution()
        grant = self.required_grant()
        if grant and grant not in ctx.tokens:
            self.log.info(
                "%s: not configured for %s: no token for grant %r (not in CasaTokenIssuer.grants, "
                "or not allowed for the user's groups)", self.name, ctx.username, grant,
            )
            return Contribution()
        return self.service_contribution(ctx)
