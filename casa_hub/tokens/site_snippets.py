"""Site-side configuration that makes storage and batch services trust the facility issuer.

The hub's ``CasaTokenIssuer`` settings (``issuer_url`` and ``grants``) are all a service needs to
verify facility tokens itself. These pure functions turn them into the snippets a site admin pastes:

- ``xrootd_scitokens_cfg``: the XRootD / XCache ``scitokens.cfg`` (``libXrdAccSciTokens.so``):
  the audience of the storage grants, and one ``[Issuer casa]`` section mapping scope paths under a
  ``base_path``.
- ``htcondor_config``: HTCondor's ``SCITOKENS_SERVER_AUDIENCE`` and the ``CERTIFICATE_MAPFILE``
  lines mapping ``<issuer>,<sub>`` to a local user.

Every value placed into a snippet is checked first. A value that could change the meaning of the
file (a newline, ``[``, ``;``, ``$``, a space, an overlong line, ...) raises ``SiteConfigError``
naming the setting, rather than producing a broken or subverted configuration.
``casa-hub site-config xrootd|htcondor -f jupyterhub_config.py`` prints them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from casa_hub.tokens.grants import Grant, UnsafeUsername, check_username

DEFAULT_BASE_PATH = "/store"
DEFAULT_ISSUER_NAME = "casa"

# XRootD's INI reader reads lines of at most 199 characters; a longer line is split in two.
MAX_INI_LINE = 198

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


# ---- XRootD -------------------------------------------------------------------------------------


def xrootd_scitokens_cfg(
    issuer_url: str,
    grants: Mapping[str, Grant],
    *,
    audience: str | None = None,
    base_path: str = DEFAULT_BASE_PATH,
    issuer_name: str = DEFAULT_ISSUER_NAME,
    map_subject: bool = False,
    default_user: str | None = None,
) -> str:
    """The ``scitokens.cfg`` text for an XRootD origin or XCache that serves the storage grants.

    ``base_path`` is the storage path that scope paths are relative to: with ``/store``, the scope
    ``storage.read:/user/alice`` allows reading ``/store/user/alice``. ``map_subject`` makes the
    token's ``sub`` (the hub username) the XRootD username (for multi-user file systems);
    ``default_user`` maps every authorized request to one local account instead.
    """
    issuer = check_issuer_url(issuer_url)
    audience, chosen = select_grants(grants, "storage.", audience)
    base = check_base_path(base_path, "--base-path")
    name = _check_choice(issuer_name, _SECTION_NAME, "issuer_name", "letters, digits, _ and -")
    lines = [
        "# XRootD / XCache: trust casa_hub facility tokens (libXrdAccSciTokens.so config=<this file>)",
        f"# Scope paths are relative to {base}:",
    ]
    for grant_name, grant in sorted(chosen.items()):
        paths = [s.split(":", 1)[1] for s in grant.scopes if s.startswith("storage.") and ":" in s]
        shown = ", ".join(f"{base.rstrip('/')}{p}" if p != "/" else base for p in paths) or "-"
        lines.append(_comment(f"  grant {grant_name}: {' '.join(grant.scopes)} -> {shown}"))
    lines += [
        "",
        "[Global]",
        f"audience = {audience}",
        "",
        f"[Issuer {name}]",
        f"issuer = {issuer}",
        f"base_path = {base}",
    ]
    if map_subject:
        lines.append("map_subject = true")
    if default_user is not None:
        user = _check_choice(default_user, _UNIX_USER, "default_user", "a local Unix account name")
        lines.append(f"default_user = {user}")
    return _check_lines("\n".join(lines) + "\n", "scitokens.cfg")


# ---- HTCondor -----------------------------------------------------------------------------------


def pcre_literal(text: str) -> str:
    """``text`` as a PCRE that matches it literally: every non-alphanumeric character escaped
    (so ``/`` cannot end the ``/.../`` of a map file line early)."""
    return "".join(c if c.isascii() and c.isalnum() else "\\" + c for c in text)


def htcondor_mapfile_lines(issuer_url: str, users: Iterable[str] | None = None) -> list[str]:
    """``CERTIFICATE_MAPFILE`` lines mapping tokens of this issuer to local users.

    HTCondor authenticates a token as ``<iss>,<sub>``. Without ``users``, one line maps every
    subject that is also a valid account name to the user of the same name (hub usernames with
    ``@``, e.g. e-mail addresses, stay unmapped: no Unix account has such a name); with ``users``,
    one line per entry, so other subjects stay unmapped. An entry is a local user whose name is
    the subject, or ``SUBJECT=LOCAL_USER`` for any hub username (``carol.higgs@uni.example=chiggs``).
    """
    issuer = pcre_literal(check_issuer_url(issuer_url))
    if users is None:
        return ["# subjects with '@' (e-mail style hub usernames) are not mapped by this line; "
                "map each with --user NAME=LOCAL_USER",
                f"SCITOKENS /^{issuer},({_MAPPED_SUBJECT})$/ \\1"]
    lines = []
    for entry in users:
        subject, _, local = entry.partition("=") if "=" in entry else (entry, "=", entry)
        try:
            check_username(subject)
        except UnsafeUsername as e:
            raise SiteConfigError(f"user {subject!r} is not a hub username: {e}") from None
        _check_choice(local, _UNIX_USER, "user", "a local Unix account name, lower case (NAME=LOCAL_USER "
                      "maps any hub username)")
        lines.append(f"SCITOKENS /^{issuer},{pcre_literal(subject)}$/ {local}")
    if not lines:
        raise SiteConfigError("an empty list of users maps nobody; omit it to map every subject")
    return lines


def htcondor_config(
    issuer_url: str,
    grants: Mapping[str, Grant],
    *,
    audience: str | None = None,
    users: Iterable[str] | None = None,
) -> str:
    """HTCondor settings (for the schedd / CE configuration) and map file lines for the compute
    grants: the accepted audience and the mapping of ``<issuer>,<sub>`` to local users."""
    issuer = check_issuer_url(issuer_url)
    audience, chosen = select_grants(grants, "compute.", audience)
    lines = [
        "# HTCondor: accept casa_hub facility tokens (SCITOKENS authentication)",
        f"# issuer {issuer}",
    ]
    for grant_name, grant in sorted(chosen.items()):
        lines.append(_comment(f"  grant {grant_name}: {' '.join(grant.scopes)}"))
    lines += [
        "",
        "# --- condor_config.d/ (e.g. 50-casa-tokens.conf) ---",
        f"SCITOKENS_SERVER_AUDIENCE = {audience}",
        "# SCITOKENS is a default authentication method since HTCondor 9.0; for older pools:",
        "# SEC_DEFAULT_AUTHENTICATION_METHODS = $(SEC_DEFAULT_AUTHENTICATION_METHODS), SCITOKENS",
        "",
        "# --- the file named by CERTIFICATE_MAPFILE, before any catch-all SCITOKENS line ---",
        *htcondor_mapfile_lines(issuer, users),
    ]
    return "\n".join(lines) + "\n"


# ---- from the hub's configuration ---------------------------------------------------------------


def issuer_settings(issuer: Any) -> tuple[str, dict[str, Grant]]:
    """``(issuer_url, parsed grants)`` of a ``CasaTokenIssuer`` (keys are not loaded)."""
    return issuer.issuer_url, dict(issuer.parsed_grants)


def load_issuer(config_file: str | Path) -> Any:
    """A ``CasaTokenIssuer`` configured from a hub config file (``jupyterhub_config.py``).

    The file runs as JupyterHub would run it (``c``, ``get_config()`` and ``load_subconfig()`` are
    provided); only the issuer's settings are read from it, and no key is loaded.
    """
    from traitlets.config.loader import ConfigFileNotFound, PyFileConfigLoader

    from casa_hub.tokens.issuer import CasaTokenIssuer

    path = Path(config_file).resolve()
    try:
        config = PyFileConfigLoader(path.name, path=str(path.parent)).load_config()
    except ConfigFileNotFound:
        raise SiteConfigError(f"hub config file {path} not found") from None
    except Exception as e:  # the file is Python: report what it raised, briefly
        raise SiteConfigError(f"cannot load hub config file {path}: {type(e).__name__}: {e}") from None
    return CasaTokenIssuer(config=config)
