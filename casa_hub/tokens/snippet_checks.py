"""What every site snippet shares: its constants, the checks of every value placed into one (a value
that could change the file's meaning raises ``SiteConfigError`` naming the setting), and the choice
of grants for one service (``casa_hub.tokens.site_snippets``, ``casa_hub.tokens.xrootd_prefix``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from casa_hub.tokens.grants import Grant

DEFAULT_BASE_PATH = "/store"
DEFAULT_ISSUER_NAME = "casa"

# XRootD's INI reader reads lines of at most 199 characters; a longer line is split in two.
MAX_INI_LINE = 198

#: The first XRootD release whose SciTokens plugin matches scope paths on path boundaries
#: (xrootd commit aa87750f0 "Only match ACLs on a full path match", in 5.6.9 and 5.7.0). Before it,
#: ``storage.read:/user/bob`` also authorizes ``/user/bobby``, with or without a trailing slash
#: (the plugin canonicalizes scope paths, dropping it).
XROOTD_PATH_BOUNDARY_FIX = (5, 6, 9)
#: 5.6.9 itself denies everything below a rule for "/" (base_path = / and scope /); fixed in 5.7.0.
XROOTD_ROOT_RULE_FIX = (5, 7, 0)
#: prefix-safe mode: a restricted_path that no token scope path starts with, so that the plugin
#: derives no authorization from scopes (XRootD >= 5.6.9 narrows broader scopes to it: nothing
#: is stored there)
NO_TOKEN_PATHS = "/.casa-hub-no-token-paths"
#: the files written by prefix-safe mode
PREFIX_SAFE_FILES = ("scitokens.cfg", "casa-users.json", "casa-authdb", "xrootd-casa.cfg")
# characters that are safe in an authorization database word (paths, group names)
_AUTHDB_WORD = re.compile(r"[A-Za-z0-9._~@+=:/%-]+")
MAX_AUTHDB_PATH = 1000
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")

_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/%+-]+")
_AUDIENCE = re.compile(r"[A-Za-z0-9._~:/%+=@-]{1,190}")
_BASE_PATH = re.compile(r"/(?:[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*)?")
_SECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# a hub username (see grants.check_username) without '@', which HTCondor reads as user@domain
_MAPPED_SUBJECT = "[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}"


class SiteConfigError(ValueError):
    """A setting cannot be placed safely into a site configuration snippet."""


# ---- checks -------------------------------------------------------------------------------------


def check_issuer_url(url: str, setting: str = "CasaTokenIssuer.issuer_url") -> str:
    """Return the issuer URL (without a trailing slash) if services can trust it, else raise.

    XRootD and HTCondor fetch the issuer's keys only over https, so the URL must be https with a
    host, no query, fragment or user info, and only URL-safe characters.
    """
    if not isinstance(url, str) or not url:
        raise SiteConfigError(f"{setting} is not set; services need the issuer's https URL")
    if not _URL_CHARS.fullmatch(url):
        raise SiteConfigError(
            f"{setting} {url!r} contains characters that are unsafe in a service configuration "
            "(allowed: letters, digits and . _ ~ : / % + -)"
        )
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SiteConfigError(
            f"{setting} must be an https URL with a host (XRootD and HTCondor fetch the issuer's "
            f"keys only over https), got {url!r}"
        )
    if ".." in parts.path.split("/"):
        raise SiteConfigError(f"{setting} {url!r} may not contain '..' path segments")
    return url.rstrip("/")


def check_audience(audience: str, setting: str = "audience") -> str:
    """Return ``audience`` if it is safe in both snippets (no spaces, commas, ``;``, ``$``, ...)."""
    if not isinstance(audience, str) or not _AUDIENCE.fullmatch(audience):
        raise SiteConfigError(
            f"{setting} {audience!r} cannot be placed in a service configuration: use 1-190 "
            "letters, digits and . _ ~ : / % + = @ - (no spaces, commas or brackets)"
        )
    return audience


def check_base_path(base_path: str, setting: str = "base_path") -> str:
    """Return the absolute storage path that token scope paths are relative to, else raise."""
    if not isinstance(base_path, str) or not base_path.startswith("/") or not _BASE_PATH.fullmatch(
        base_path.rstrip("/") or "/"
    ):
        raise SiteConfigError(
            f"{setting} {base_path!r} must be an absolute path of letters, digits and . _ - "
            "separated by single slashes"
        )
    base_path = base_path.rstrip("/") or "/"
    if {".", ".."} & set(base_path.split("/")):
        raise SiteConfigError(f"{setting} {base_path!r} may not contain '.' or '..' segments")
    return base_path


def _check_choice(value: str, pattern: re.Pattern[str], setting: str, allowed: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SiteConfigError(f"{setting} {value!r} is not allowed here ({allowed})")
    return value


def _comment(text: str) -> str:
    """A comment line, shortened to what XRootD reads as one line."""
    line = f"# {text}"
    return line if len(line) <= MAX_INI_LINE else line[: MAX_INI_LINE - 3] + "..."


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def _check_lines(text: str, what: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_INI_LINE:
            raise SiteConfigError(
                f"line {number} of the {what} would be {len(line)} characters long; XRootD reads "
                f"at most {MAX_INI_LINE} (shorten the issuer URL or audience)"
            )
    return text


# ---- grant selection ----------------------------------------------------------------------------


def _grants_with_prefix(grants: Mapping[str, Grant], prefix: str) -> dict[str, Grant]:
    return {n: g for n, g in grants.items() if any(s.startswith(prefix) for s in g.scopes)}


def select_grants(
    grants: Mapping[str, Grant], scope_prefix: str, audience: str | None = None
) -> tuple[str, dict[str, Grant]]:
    """The audience of a service and the grants (with ``scope_prefix`` scopes) aimed at it.

    Without ``audience``, the grants' audience is used if it is unique; several audiences need an
    explicit choice, so one service never accepts tokens meant for another.
    """
    relevant = _grants_with_prefix(grants, scope_prefix)
    if audience is not None:
        check_audience(audience, "--audience")
        chosen = {n: g for n, g in relevant.items() if g.audience == audience}
        if not chosen:
            raise SiteConfigError(
                f"no grant with {scope_prefix}* scopes has audience {audience!r}; "
                f"audiences of such grants: {sorted({g.audience for g in relevant.values()})}"
            )
        return audience, chosen
    audiences = sorted({g.audience for g in relevant.values()})
    if not audiences:
        raise SiteConfigError(
            f"no grant in CasaTokenIssuer.grants has {scope_prefix}* scopes; nothing to configure"
        )
    if len(audiences) > 1:
        raise SiteConfigError(
            f"grants with {scope_prefix}* scopes name several audiences {audiences}; "
            "choose this service's with --audience"
        )
    audience = check_audience(audiences[0], f"the audience of grant(s) {sorted(relevant)}")
    return audience, relevant


