"""``casa-hub site-config xrootd|htcondor``: print the settings that make a service trust the issuer."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from casa_hub.tokens.grants import GrantConfigError
from casa_hub.tokens.site_snippets import (
    DEFAULT_BASE_PATH,
    SiteConfigError,
    detect_xrootd_version,
    htcondor_config,
    issuer_settings,
    load_issuer,
    parse_xrootd_version,
    prefix_safe_merge_note,
    select_grants,
    xrootd_matches_prefixes,
    xrootd_prefix_safe_files,
    xrootd_prefix_warnings,
    xrootd_scitokens_cfg,
)

HELP = "print the XRootD or HTCondor settings that trust the facility issuer"


def add_arguments(parser: Any) -> None:
    """Arguments of ``casa-hub site-config`` (an ``argparse`` sub-parser)."""
    parser.add_argument("service", choices=["xrootd", "htcondor"],
                        help="xrootd: scitokens.cfg for an XRootD origin or XCache; "
                             "htcondor: SCITOKENS_SERVER_AUDIENCE and map file lines")
    parser.add_argument("-f", "--config", default="jupyterhub_config.py",
                        help="the hub's config file (default: ./jupyterhub_config.py)")
    parser.add_argument("--audience", default=None,
                        help="this service's audience (needed when grants name several)")
    parser.add_argument("--base-path", default=DEFAULT_BASE_PATH,
                        help=f"xrootd: storage path that scope paths are relative to (default {DEFAULT_BASE_PATH}); "
                             "scopes that already start with it are refused (use --base-path /)")
    parser.add_argument("--map-subject", action="store_true",
                        help="xrootd: use the token's sub (the hub username) as the XRootD username")
    parser.add_argument("--xrootd-version", default="auto", metavar="VERSION",
                        help="xrootd: the servers' XRootD version (xrootd -v), e.g. 5.5.3; default: that of the "
                             "xrootd installed here, if any. Before 5.6.9 the SciTokens plugin matches scope paths "
                             "as string prefixes (bob's /user/bob reads /user/bobby): per-user scopes are refused "
                             "then, unless --prefix-safe")
    parser.add_argument("--prefix-safe", action="store_true",
                        help="xrootd: write a configuration that holds on every XRootD 5 (authorization database "
                             "with path boundaries, subjects mapped for the --user names) into --output-dir")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="xrootd --prefix-safe: where to write scitokens.cfg, casa-users.json, casa-authdb and "
                             "xrootd-casa.cfg (replaced if present)")
    parser.add_argument("--install-dir", default=None, metavar="DIR",
                        help="xrootd --prefix-safe: the directory the files will be in on the server "
                             "(default: --output-dir)")
    parser.add_argument("--allow-prefix-reads", action="store_true",
                        help="xrootd: print the scitokens.cfg even where per-user paths are read by users whose "
                             "names extend another's (XRootD < 5.6.9)")
    parser.add_argument("--user", action="append", dest="users", default=None,
                        help="htcondor: map only this subject (repeatable): a local user of the same name, "
                             "or NAME=LOCAL_USER for any hub username (e-mail style names need it); "
                             "default: every subject without '@' to the local user of the same name. "
                             "xrootd --prefix-safe: a hub user whose own paths this server serves (repeatable)")


def _xrootd_version(arg: str) -> tuple[tuple[int, int, int] | None, str]:
    """The version to configure for and where it came from."""
    if arg == "auto":
        found = detect_xrootd_version()
        return (parse_xrootd_version(found), f"xrootd -v here: {found}") if found else (None, "unknown")
    version = parse_xrootd_version(arg)
    if version is None:
        raise SiteConfigError(f"--xrootd-version {arg!r} is not a version such as 5.5.3")
    return version, f"--xrootd-version {arg}"


def _write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # read by the xrootd service user; nothing secret
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _xrootd(args: Any, issuer: Any, issuer_url: str, grants: dict) -> str:
    version, source = _xrootd_version(args.xrootd_version)
    if args.prefix_safe:
        if args.map_subject or args.allow_prefix_reads:
            raise SiteConfigError("--prefix-safe maps subjects itself and allows no prefix reads: "
                                  "drop --map-subject / --allow-prefix-reads")
        if not args.output_dir:
            raise SiteConfigError("--prefix-safe writes four files: name the directory with --output-dir DIR")
        out = Path(args.output_dir).resolve()
        files = xrootd_prefix_safe_files(
            issuer_url, grants, users=args.users, install_dir=args.install_dir or str(out),
            audience=args.audience, base_path=args.base_path,
            groups_claim=getattr(issuer, "default_groups_claim", "wlcg.groups"))
        _write_files(out, files)
        chosen_audience, chosen = select_grants(grants, "storage.", args.audience)
        note = prefix_safe_merge_note(chosen, chosen_audience)
        if note:
            print(f"casa-hub site-config: note: {note}", file=sys.stderr)
        if xrootd_matches_prefixes(version) is False:
            print(f"casa-hub site-config: note: XRootD {'.'.join(map(str, version))} ({source}) matches scope "
                  "paths on path boundaries; the configuration without --prefix-safe is prefix-safe there too",
                  file=sys.stderr)
        include = Path(args.install_dir or out) / "xrootd-casa.cfg"
        return (f"# wrote {', '.join(files)} to {out}\n"
                f"# include them in the xrootd configuration with: continue {include}\n")
    if args.users:
        raise SiteConfigError("--user names the users of --prefix-safe (or of htcondor); add --prefix-safe")
    if args.output_dir or args.install_dir:
        raise SiteConfigError("--output-dir / --install-dir are for --prefix-safe")
    text = xrootd_scitokens_cfg(issuer_url, grants, audience=args.audience, base_path=args.base_path,
                                map_subject=args.map_subject, xrootd_version=version,
                                allow_prefix_reads=args.allow_prefix_reads)
    _, chosen = select_grants(grants, "storage.", args.audience)
    for warning in xrootd_prefix_warnings(chosen, args.base_path, version):
        print(f"casa-hub site-config: warning: {warning}", file=sys.stderr)
    return text


def run(args: Any) -> int:
    """Print the requested snippet; errors go to stderr with exit code 1."""
    try:
        issuer = load_issuer(args.config)
        issuer_url, grants = issuer_settings(issuer)
        if args.service == "xrootd":
            text = _xrootd(args, issuer, issuer_url, grants)
        else:
            for option in ("prefix_safe", "allow_prefix_reads", "output_dir", "install_dir"):
                if getattr(args, option):
                    raise SiteConfigError(f"--{option.replace('_', '-')} is an xrootd option")
            text = htcondor_config(issuer_url, grants, audience=args.audience, users=args.users)
    except (SiteConfigError, GrantConfigError, OSError) as e:
        print(f"casa-hub site-config: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
