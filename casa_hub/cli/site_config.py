"""``casa-hub site-config xrootd|htcondor``: print the settings that make a service trust the issuer."""

from __future__ import annotations

import sys
from typing import Any

from casa_hub.tokens.grants import GrantConfigError
from casa_hub.tokens.site_snippets import (
    DEFAULT_BASE_PATH,
    SiteConfigError,
    htcondor_config,
    issuer_settings,
    load_issuer,
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
                        help=f"xrootd: storage path that scope paths are relative to (default {DEFAULT_BASE_PATH})")
    parser.add_argument("--map-subject", action="store_true",
                        help="xrootd: use the token's sub (the hub username) as the XRootD username")
    parser.add_argument("--user", action="append", dest="users", default=None,
                        help="htcondor: map only this subject (repeatable): a local user of the same name, "
                             "or NAME=LOCAL_USER for any hub username (e-mail style names need it); "
                             "default: every subject without '@' to the local user of the same name")


def run(args: Any) -> int:
    """Print the requested snippet; errors go to stderr with exit code 1."""
    try:
        issuer_url, grants = issuer_settings(load_issuer(args.config))
        if args.service == "xrootd":
            text = xrootd_scitokens_cfg(issuer_url, grants, audience=args.audience,
                                        base_path=args.base_path, map_subject=args.map_subject)
        else:
            text = htcondor_config(issuer_url, grants, audience=args.audience, users=args.users)
    except (SiteConfigError, GrantConfigError) as e:
        print(f"casa-hub site-config: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
