"""Setting checks shared by the integrations (pure functions: a reason string, or None).

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
