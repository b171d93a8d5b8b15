"""Grants: which token a user may receive for which facility service.

A grant is site configuration: an audience, scope templates such as ``storage.read:/user/{username}``,
a lifetime and the groups allowed to receive it. Usernames that cannot be placed safely into a path
or a scope string are refused, never rewritten into something else (which could be another user's path).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

DEFAULT_LIFETIME = 20 * 60
MAX_LIFETIME = 6 * 60 * 60

# ASCII letters, digits and . _ @ + - only; must start with a letter, digit or underscore.
_SAFE_USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@+-]{0,127}")
_TEMPLATE_FIELDS = {"username"}
_GRANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_INCOMPLETE_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class GrantConfigError(ValueError):
    """A grant in the site configuration is invalid; the message names the setting."""


class UnsafeUsername(ValueError):
    """A username that cannot be placed safely into a token's scope paths."""


def check_username(username: str) -> str:
    """Return ``username`` unchanged if it is safe in a path and a scope, else raise UnsafeUsername."""
    if not isinstance(username, str) or not _SAFE_USERNAME.fullmatch(username):
        raise UnsafeUsername(
            "usernames may only contain ASCII letters, digits and . _ @ + - "
            "(at most 128 characters, not starting with . @ + -)"
        )
    if ".." in username:
        raise UnsafeUsername("usernames may not contain '..'")
    return username


@dataclass(frozen=True)
class Grant:
    """One kind of facility token."""

    name: str
    audience: str
    scopes: tuple[str, ...]
    lifetime: int = DEFAULT_LIFETIME
    groups: frozenset[str] | None = None  # None: every user of the facility

    def allows(self, groups: Iterable[str]) -> bool:
        """Whether a member of ``groups`` may receive this grant."""
        return self.groups is None or bool(self.groups.intersection(groups))

    def render_scopes(self, username: str) -> str:
        """The space-separated scope claim for ``username``."""
        check_username(username)
        return " ".join(s.format(username=username) for s in self.scopes)


def _check_template(where: str, template: str) -> None:
    if not isinstance(template, str) or not template or any(c.isspace() for c in template):
        raise GrantConfigError(f"{where}: each scope must be a non-empty string without spaces")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise GrantConfigError(f"{where}: bad scope template {template!r}: {e}") from None
    fields = [(f, spec, conversion) for _, f, spec, conversion in parts if f is not None]
    unknown = {f for f, _, _ in fields} - _TEMPLATE_FIELDS
    if unknown:
        raise GrantConfigError(
            f"{where}: unknown placeholder(s) {sorted(unknown)} in {template!r}; "
            f"allowed: {{username}}"
        )
    if any(spec or conversion for _, spec, conversion in fields):
        # {username:.0} renders nothing, {username:>9} adds spaces (a second scope), {username!r} quotes
        raise GrantConfigError(f"{where}: write the placeholder as {{username}} (no format spec or "
                               f"conversion) in {template!r}")
    before_placeholder = ""  # the template's text up to its first placeholder
    for literal, field, _, _ in parts:
        before_placeholder += literal
        if field is not None:
            break
    if fields and ":" not in before_placeholder:
        raise GrantConfigError(f"{where}: {{username}} may only appear in the path of a scope "
                               f"(after ':'), not in its authorization: {template!r}")
    _check_scope_path(where, template)


def _check_scope_path(where: str, template: str) -> None:
    """Refuse scope paths that could leave the directory they name (``..``, ``.``, ``\\``, ``%2e``)."""
    if ":" not in template:
        return
    authz, path = template.split(":", 1)
    if (authz.startswith("storage.") or authz in ("read", "write")) and not path.startswith("/"):
        raise GrantConfigError(f"{where}: the path in {template!r} must be absolute (start with /)")
    if "\\" in path or not path.isprintable():
        raise GrantConfigError(f"{where}: the path in {template!r} has a backslash or control character")
    if _INCOMPLETE_ESCAPE.search(path):
        # '%2{username}' would become '%2e' (a '.' segment) for the username 'e'
        raise GrantConfigError(f"{where}: the path in {template!r} has a '%' that does not start "
                               f"a complete escape such as %2F")
    for segment in path.split("/"):
        while "%" in segment and unquote(segment) != segment:  # %2e%2e, %252e%252e, ...
            segment = unquote(segment)
        if segment in (".", ".."):
            raise GrantConfigError(
                f"{where}: the path in {template!r} has a '.' or '..' segment (path traversal)"
            )


def parse_grant(name: str, spec: Mapping[str, Any], setting: str = "grants") -> Grant:
    """Validate one grant from configuration; errors name ``setting[name]`` and the field."""
    where = f"{setting}[{name!r}]"
    if not isinstance(name, str) or not _GRANT_NAME.fullmatch(name):
        raise GrantConfigError(
            f"{where}: grant names are 1-32 characters of a-z, 0-9, _ or -, starting with a letter"
        )
    if not isinstance(spec, Mapping):
        raise GrantConfigError(f"{where}: must be a dict with audience, scopes, lifetime, groups")
    unknown = set(spec) - {"audience", "scopes", "lifetime", "groups"}
    if unknown:
        raise GrantConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    audience = spec.get("audience")
    if not isinstance(audience, str) or not audience.strip():
        raise GrantConfigError(f"{where}.audience: required, a non-empty string")
    scopes = spec.get("scopes")
    if isinstance(scopes, str):
        scopes = scopes.split()
    if not scopes or not isinstance(scopes, list | tuple):
        raise GrantConfigError(f"{where}.scopes: required, a list of scope templates")
    for template in scopes:
        _check_template(f"{where}.scopes", template)
    lifetime = spec.get("lifetime", DEFAULT_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        raise GrantConfigError(f"{where}.lifetime: a positive number of seconds")
    if lifetime > MAX_LIFETIME:
        raise GrantConfigError(
            f"{where}.lifetime: {lifetime} s is longer than the maximum of {MAX_LIFETIME} s (6 hours)"
        )
    groups = spec.get("groups")
    if groups is not None:
        if not isinstance(groups, list | tuple | set | frozenset) or not all(isinstance(g, str) for g in groups):
            raise GrantConfigError(f"{where}.groups: a list of group names (or omit it for all users)")
        groups = frozenset(groups)
    return Grant(name, audience.strip(), tuple(scopes), lifetime, groups)


def parse_grants(specs: Mapping[str, Any], setting: str = "grants") -> dict[str, Grant]:
    """Validate a mapping of grant name to grant spec."""
    return {name: parse_grant(name, spec, setting) for name, spec in specs.items()}
