"""Site-side configuration that makes storage and batch services trust the facility issuer.

The hub's ``CasaTokenIssuer`` settings (``issuer_url`` and ``grants``) are all a service needs to
verify facility tokens itself. These pure functions turn them into the snippets a site admin pastes:

- ``xrootd_scitokens_cfg``: the XRootD / XCache ``scitokens.cfg`` (``libXrdAccSciTokens.so``):
  the audience of the storage grants, and one ``[Issuer casa]`` section mapping scope paths under a
  ``base_path``. The token's scopes authorize by themselves ("scope mode").
- ``xrootd_prefix_safe_files``: the files of "prefix-safe mode" (``--prefix-safe``): the plugin only
  verifies the token and maps its subject to a listed user; an authorization database grants each
  grant's paths with a path boundary. Needed on XRootD < 5.6.9 (Debian bookworm ships 5.5.3), whose
  plugin matches scope paths as string prefixes: a token for ``/store/user/bob`` also reads
  ``/store/user/bobby`` there (fixed upstream by "Only match ACLs on a full path match", first
  released in 5.6.9).
- ``htcondor_config``: HTCondor's ``SCITOKENS_SERVER_AUDIENCE`` and the ``CERTIFICATE_MAPFILE``
  lines mapping ``<issuer>,<sub>`` to a local user.

Every value placed into a snippet is checked first. A value that could change the meaning of the
file (a newline, ``[``, ``;``, ``$``, a space, an overlong line, ...) raises ``SiteConfigError``
naming the setting, rather than producing a broken or subverted configuration.
``casa-hub site-config xrootd|htcondor -f jupyterhub_config.py`` prints them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from casa_hub.tokens.grants import Grant, UnsafeUsername, check_username

# the shared checks and the prefix-safe mode live in their own modules; their names stay importable here
from casa_hub.tokens.snippet_checks import (  # noqa: F401
    _MAPPED_SUBJECT,
    _SECTION_NAME,
    _UNIX_USER,
    DEFAULT_BASE_PATH,
    DEFAULT_ISSUER_NAME,
    MAX_AUTHDB_PATH,
    MAX_INI_LINE,
    NO_TOKEN_PATHS,
    PREFIX_SAFE_FILES,
    XROOTD_PATH_BOUNDARY_FIX,
    XROOTD_ROOT_RULE_FIX,
    SiteConfigError,
    _check_choice,
    _check_lines,
    _comment,
    check_audience,
    check_base_path,
    check_issuer_url,
    select_grants,
)
from casa_hub.tokens.xrootd_prefix import (  # noqa: F401
    ScopePath,
    check_base_not_doubled,
    detect_xrootd_version,
    join_base,
    parse_xrootd_version,
    prefix_read_example,
    prefix_safe_merge_note,
    storage_scope_paths,
    xrootd_matches_prefixes,
    xrootd_prefix_safe_files,
    xrootd_prefix_warnings,
)

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
    xrootd_version: tuple[int, int, int] | None = None,
    allow_prefix_reads: bool = False,
) -> str:
    """The ``scitokens.cfg`` text for an XRootD origin or XCache that serves the storage grants.

    ``base_path`` is the storage path that scope paths are relative to: with ``/store``, the scope
    ``storage.read:/user/alice`` allows reading ``/store/user/alice``. ``map_subject`` makes the
    token's ``sub`` (the hub username) the XRootD username (for multi-user file systems);
    ``default_user`` maps every authorized request to one local account instead.

    On an ``xrootd_version`` that matches scope paths as string prefixes (< 5.6.9), a per-user scope
    path that ends with the username (``/user/{username}``: bob would read ``/user/bobby``) is refused
    unless ``allow_prefix_reads``; use ``xrootd_prefix_safe_files`` there.
    """
    issuer = check_issuer_url(issuer_url)
    audience, chosen = select_grants(grants, "storage.", audience)
    base = check_base_path(base_path, "--base-path")
    name = _check_choice(issuer_name, _SECTION_NAME, "issuer_name", "letters, digits, _ and -")
    scopes = storage_scope_paths(chosen)
    check_base_not_doubled(scopes, base)
    unsafe = [sp for sp in scopes if sp.per_user and not sp.prefix_safe]
    affected = xrootd_matches_prefixes(xrootd_version)
    if unsafe and affected and not allow_prefix_reads:
        version = ".".join(map(str, xrootd_version or ()))
        raise SiteConfigError(
            f"XRootD {version} matches token scope paths as string prefixes (fixed in 5.6.9): "
            f"{prefix_read_example(unsafe[0], base)}. Generate the prefix-safe configuration "
            "(--prefix-safe --user NAME ... --output-dir DIR), give the scope a fixed component after the "
            "username (storage.read:/user/{username}/data), or upgrade XRootD; --allow-prefix-reads "
            "generates this configuration anyway"
        )
    lines = [
        "# XRootD / XCache: trust casa_hub facility tokens (libXrdAccSciTokens.so config=<this file>)",
        f"# Scope paths are relative to {base}:",
    ]
    for grant_name, grant in sorted(chosen.items()):
        paths = [s.split(":", 1)[1] for s in grant.scopes if s.startswith("storage.") and ":" in s]
        shown = ", ".join(f"{base.rstrip('/')}{p}" if p != "/" else base for p in paths) or "-"
        lines.append(_comment(f"  grant {grant_name}: {' '.join(grant.scopes)} -> {shown}"))
    if unsafe and affected is not False:
        lines.append("# WARNING: XRootD < 5.6.9 matches scope paths as string prefixes: with the per-user paths")
        lines.append("# above a user reads the paths of users whose names start with theirs (bob reads bobby's).")
        lines.append("# There, use: casa-hub site-config xrootd --prefix-safe")
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
