"""XRootD versions whose SciTokens plugin matches scope paths as string prefixes (before 5.6.9), and
the files of "prefix-safe mode" (``casa-hub site-config xrootd --prefix-safe``): the plugin only
verifies the token and maps its subject to a listed user, and an authorization database grants each
grant's paths with a path boundary. See ``casa_hub.tokens.site_snippets`` for the snippets themselves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from casa_hub.tokens.grants import Grant, UnsafeUsername, check_username

# ---- XRootD versions and prefix matching -------------------------------------------------------
from casa_hub.tokens.snippet_checks import (
    _AUTHDB_WORD,
    _SECTION_NAME,
    _VERSION,
    DEFAULT_BASE_PATH,
    DEFAULT_ISSUER_NAME,
    MAX_AUTHDB_PATH,
    NO_TOKEN_PATHS,
    XROOTD_PATH_BOUNDARY_FIX,
    XROOTD_ROOT_RULE_FIX,
    SiteConfigError,
    _check_choice,
    _check_lines,
    _comment,
    _wrap,
    check_base_path,
    check_issuer_url,
    select_grants,
)


def parse_xrootd_version(text: str | None) -> tuple[int, int, int] | None:
    """``(5, 5, 3)`` from ``"v5.5.3"``, ``"5.5.3"`` or ``xrootd -v`` output; None if there is none."""
    match = _VERSION.search(text or "")
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def detect_xrootd_version() -> str | None:
    """The version printed by ``xrootd -v`` on this machine, or None if xrootd is not installed."""
    exe = shutil.which("xrootd")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    version = parse_xrootd_version(r.stdout + r.stderr)
    return ".".join(map(str, version)) if version else None


def xrootd_matches_prefixes(version: tuple[int, int, int] | None) -> bool | None:
    """True if this XRootD's SciTokens plugin matches scope paths as string prefixes (< 5.6.9),
    False if it matches path boundaries, None if the version is unknown."""
    if version is None:
        return None
    return tuple(version) < XROOTD_PATH_BOUNDARY_FIX


@dataclass(frozen=True)
class ScopePath:
    """One ``storage.*`` scope of a grant, and what string-prefix matching makes of it."""

    grant: str
    scope: str  # as configured, e.g. storage.read:/user/{username}
    authz: str  # storage.read
    path: str  # /user/{username}
    per_user: bool  # the path contains {username}
    prefix_safe: bool  # no other user's path (per-user), or no sibling (static) extends it

    def shown(self, base: str, username: str = "{username}") -> str:
        return join_base(base, self.path.format(username=username) if self.per_user else self.path)


def join_base(base: str, path: str) -> str:
    """``base`` + scope ``path`` as the plugin joins them (``/store`` + ``/`` is ``/store``)."""
    parts = [p for p in f"{base}/{path}".split("/") if p]
    return "/" + "/".join(parts)


def _per_user_prefix_safe(path: str) -> bool:
    # safe iff the first {username} is followed by '/' and at least one more component: then a
    # different user's name, which has no '/', differs from it before the path ends
    rest = path.split("{username}", 1)[1]
    return rest.startswith("/") and any(seg not in ("", ".") for seg in rest.split("/"))


def storage_scope_paths(grants: Mapping[str, Grant]) -> list[ScopePath]:
    """The ``storage.*:<path>`` scopes of ``grants``, classified for prefix matching."""
    out = []
    for name, grant in sorted(grants.items()):
        for scope in grant.scopes:
            if not scope.startswith("storage.") or ":" not in scope:
                continue
            authz, path = scope.split(":", 1)
            per_user = "{username}" in path
            safe = _per_user_prefix_safe(path) if per_user else join_base("/", path) == "/"
            out.append(ScopePath(name, scope, authz, path, per_user, safe))
    return out


def check_base_not_doubled(scopes: Iterable[ScopePath], base: str) -> None:
    """Refuse a base path that the scope paths already start with (``/store`` + ``/store/user``)."""
    if base == "/":
        return
    for sp in scopes:
        literal = sp.path.split("{username}", 1)[0]
        if join_base("/", literal) == base or literal.startswith(base + "/"):
            raise SiteConfigError(
                f"the scope {sp.scope} of grant {sp.grant} already starts with the base path {base}: XRootD "
                f"would look for {join_base(base, sp.path)}. Scope paths are relative to --base-path; "
                "use --base-path / for scopes that name the full storage path"
            )


def prefix_read_example(sp: ScopePath, base: str) -> str:
    """A sentence showing what string-prefix matching lets a token of ``sp`` read."""
    if sp.per_user:
        mine = sp.shown(base, "bob")
        other = sp.shown(base, "bobby")
        return (f"bob's token of grant {sp.grant} ({sp.scope}) also reads {other}, another user's path, "
                f"as {mine} is a string prefix of it")
    shown = sp.shown(base)
    return f"a token of grant {sp.grant} ({sp.scope}) also reads every path that starts with {shown}, e.g. {shown}-other"


def xrootd_prefix_warnings(
    grants: Mapping[str, Grant], base_path: str, version: tuple[int, int, int] | None
) -> list[str]:
    """What the plain scitokens.cfg (scope mode) lets these storage grants read on this XRootD: string-prefix
    matching before 5.6.9 (per-user and static paths), the rule for / that grants nothing in 5.6.9."""
    affected = xrootd_matches_prefixes(version)
    base = check_base_path(base_path, "--base-path")
    if affected is False:
        if version is not None and tuple(version) < XROOTD_ROOT_RULE_FIX:
            return [f"XRootD {'.'.join(map(str, version))} authorizes nothing below / for a rule of / (fixed in "
                    f"5.7.0): grant {sp.grant} ({sp.scope}) reads nothing with --base-path /; use e.g. /store"
                    for sp in storage_scope_paths(grants) if not sp.per_user and sp.shown(base) == "/"]
        return []
    where = f"XRootD {'.'.join(map(str, version))}" if version else "XRootD < 5.6.9 (version unknown here)"
    out = []
    for sp in storage_scope_paths(grants):
        if sp.prefix_safe or (not sp.per_user and not affected):
            continue
        out.append(f"on {where} {prefix_read_example(sp, base)}")
    if out and affected is None:
        out.append("pass --xrootd-version VERSION (xrootd -v on the storage servers); for XRootD < 5.6.9 "
                   "generate the configuration with --prefix-safe")
    return out


def _authdb_word(value: str, what: str) -> str:
    if not _AUTHDB_WORD.fullmatch(value) or len(value) > MAX_AUTHDB_PATH:
        raise SiteConfigError(
            f"{what} {value!r} cannot be placed in the XRootD authorization database (allowed: letters, "
            f"digits and . _ ~ @ + = : / % -, at most {MAX_AUTHDB_PATH} characters)"
        )
    return value


def prefix_safe_merge_note(grants: Mapping[str, Grant], audience: str) -> str | None:
    """In prefix-safe mode the server cannot tell one grant's token from another's (the authorization
    database sees the subject and groups, not the scopes): say so when one audience has several grants."""
    if len(grants) < 2:
        return None
    limited = sorted(n for n, g in grants.items() if g.groups and not any("{username}" in sc for sc in g.scopes))
    limited = limited or sorted(n for n, g in grants.items() if g.groups)
    return (f"grants {', '.join(sorted(grants))} share the audience {audience}: with --prefix-safe a user reads "
            "the paths of all of them that their groups allow with any token of that audience"
            + (f" (e.g. members of the groups of grant {limited[0]} read its paths with their other tokens too)"
               if limited else "")
            + "; give a grant its own audience to keep its tokens apart")


def xrootd_prefix_safe_files(
    issuer_url: str,
    grants: Mapping[str, Grant],
    *,
    users: Iterable[str] | None,
    install_dir: str,
    audience: str | None = None,
    base_path: str = DEFAULT_BASE_PATH,
    issuer_name: str = DEFAULT_ISSUER_NAME,
    groups_claim: str = "wlcg.groups",
) -> dict[str, str]:
    """The files of prefix-safe mode, by name (``PREFIX_SAFE_FILES``), for ``install_dir`` on the server.

    XRootD < 5.6.9 authorizes a request at once when a token scope path is a string prefix of the
    requested path, so no scope may authorize there. Instead:

    - ``scitokens.cfg``: the plugin verifies the token (issuer, signature, audience, expiry) as before,
      but ``restricted_path`` keeps none of its scopes; ``name_mapfile`` maps the token's subject to the
      XRootD user of the same name, for the listed ``users`` only;
    - ``casa-users.json``: that map;
    - ``casa-authdb``: XRootD's authorization database. Each rule requires the organisation the plugin
      sets (the issuer URL, never set by a login alone) and the grant's groups (``wlcg.groups``); each
      path ends with ``/``, so that ``/store/user/bob/`` is not a prefix of ``/store/user/bobby``.
      Per-user paths get one rule per listed user; other paths one rule per group of the grant;
    - ``xrootd-casa.cfg``: the lines to include in the server's configuration (``continue <file>``):
      the default authorization with ``acc.authdb``, and the plugin chained to it (``ofs.authlib ++``).

    Only ``storage.read`` scopes are translated (reading: lookup and read, ``lr``). A request is then
    authorized by who the token is for and their groups, not by the token's scope: grants that must
    differ on one server need different audiences.
    """
    issuer = check_issuer_url(issuer_url)
    audience, chosen = select_grants(grants, "storage.", audience)
    base = check_base_path(base_path, "--base-path")
    name = _check_choice(issuer_name, _SECTION_NAME, "issuer_name", "letters, digits, _ and -")
    install = check_base_path(install_dir, "--install-dir")
    scopes = storage_scope_paths(chosen)
    check_base_not_doubled(scopes, base)
    for sp in scopes:
        if sp.authz != "storage.read":
            raise SiteConfigError(
                f"--prefix-safe translates storage.read scopes only; grant {sp.grant} has {sp.scope} "
                "(give it its own audience and server, or use XRootD >= 5.6.9 without --prefix-safe)"
            )
        if sp.path.startswith(NO_TOKEN_PATHS):
            raise SiteConfigError(f"the scope {sp.scope} of grant {sp.grant} is under {NO_TOKEN_PATHS}, "
                                  "which prefix-safe mode reserves")
    listed = []
    for user in users or ():
        try:
            listed.append(check_username(user))
        except UnsafeUsername as e:
            raise SiteConfigError(f"user {user!r} is not a hub username: {e}") from None
    listed = sorted(set(listed))
    if any(sp.per_user for sp in scopes) and not listed:
        raise SiteConfigError(
            "--prefix-safe needs the hub users whose own paths this server serves (--user NAME, repeatable): "
            "their tokens are mapped to them by name; tokens of users not listed read no per-user path"
        )
    group_grants = [g for g in chosen.values() if g.groups]
    if group_grants and groups_claim != "wlcg.groups":
        raise SiteConfigError(
            f"grant {group_grants[0].name} is limited to groups, which XRootD reads from the wlcg.groups claim; "
            f"the hub puts groups in {groups_claim!r} (CasaTokenIssuer.default_groups_claim)"
        )
    for word in (issuer, install):
        _authdb_word(word, "the value")

    ids = 0
    authdb = [
        "# casa_hub: who may read what on this XRootD (prefix-safe; casa-hub site-config xrootd --prefix-safe)",
        "# Every identity requires the organisation set by the SciTokens plugin for a verified token of",
        f"# audience {audience} (o: the issuer URL) and, where the grant names them, one of its groups.",
        "# Paths end with '/': no user's path is a prefix of another user's.",
    ]
    note = prefix_safe_merge_note(chosen, audience)
    if note:
        authdb += [_comment(line) for line in _wrap(f"NOTE: {note}", 100)]
    for grant_name, grant in sorted(chosen.items()):
        mine = [sp for sp in scopes if sp.grant == grant_name]
        groups = sorted(grant.groups) if grant.groups else [None]
        for group in groups:
            if group is not None:
                _authdb_word(f"/{group}", f"group of grant {grant_name}")
        authdb.append("")
        authdb.append(_comment(f"grant {grant_name}: {' '.join(sp.scope for sp in mine)}"))
        # static paths once per group; per-user paths once per listed user and group
        rules = [(None, sp) for sp in mine if not sp.per_user]
        rules += [(who, sp) for who in listed for sp in mine if sp.per_user]
        for who, sp in rules:
            path = sp.shown(base, who or "")
            path = path if path == "/" else path + "/"
            _authdb_word(path, f"the path of {sp.scope}")
            for group in groups:
                ids += 1
                ident = f"casa_{ids}"
                selectors = [f"o: {issuer}"]
                if group is not None:
                    selectors.append(f"g: /{group}")
                if who is not None:
                    selectors.append(f"u: {who}")
                authdb.append(f"= {ident} {' '.join(selectors)}")
                authdb.append(f"s {ident} {path} lr")
    users_file = f"{install.rstrip('/')}/casa-users.json"
    authdb_file = f"{install.rstrip('/')}/casa-authdb"
    cfg_file = f"{install.rstrip('/')}/scitokens.cfg"
    scitokens = [
        "# XRootD / XCache: trust casa_hub facility tokens, prefix-safe (casa-hub site-config xrootd --prefix-safe)",
        "# The token's scopes authorize nothing here (restricted_path keeps none of them): XRootD < 5.6.9",
        "# matches them as string prefixes. The subject is mapped to a listed user (name_mapfile) and",
        f"# {authdb_file} authorizes, with path boundaries. Scope paths are relative to {base}.",
        "",
        "[Global]",
        f"audience = {audience}",
        "",
        f"[Issuer {name}]",
        f"issuer = {issuer}",
        f"base_path = {base}",
        f"restricted_path = {NO_TOKEN_PATHS}",
        f"name_mapfile = {users_file}",
    ]
    include = [
        "# casa_hub prefix-safe token authorization: include in this server's xrootd configuration with",
        f"#   continue {install.rstrip('/')}/xrootd-casa.cfg",
        "# (and remove other ofs.authlib / acc.authdb lines). Also needed: xrootd.seclib libXrdSec.so,",
        "# sec.protocol ztn and xrd.tls (root://), http.header2cgi Authorization authz (https).",
        "ofs.authorize 1",
        f"acc.authdb {authdb_file}",
        "acc.authrefresh 60",
        f"ofs.authlib ++ libXrdAccSciTokens.so config={cfg_file}",
    ]
    mapfile = [{"sub": user, "result": user} for user in listed]
    return {
        "scitokens.cfg": _check_lines("\n".join(scitokens) + "\n", "scitokens.cfg"),
        "casa-users.json": "[\n" + ",\n".join(f"  {json.dumps(rule)}" for rule in mapfile) + "\n]\n",
        "casa-authdb": "\n".join(authdb) + "\n",
        "xrootd-casa.cfg": "\n".join(include) + "\n",
    }


