"""``casa-hub keys``: rotate the facility issuer's signing keys in a key directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "rotate the facility issuer's signing keys in a key directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status", "add-next", "promote", "prune"],
                        help="status: list keys by role; add-next: create and publish a next key; "
                             "promote: let the next key sign; prune: remove expired retired keys")
    parser.add_argument("--key-dir", required=True, help="the issuer's key directory (CasaTokenIssuer.key_dir)")
    parser.add_argument("--alg", default="ES256", choices=["ES256", "RS256"], help="algorithm of a new key")
    parser.add_argument("--min-published", type=int, default=600,
                        help="seconds a next key must have been published before it may sign (default 600)")
    parser.add_argument("--force", action="store_true", help="promote even if the next key is newly published")
    parser.add_argument("--max-lifetime", type=int, default=6 * 3600,
                        help="longest token lifetime of any grant, in seconds (default 21600, the maximum)")


def run(args: argparse.Namespace) -> int:
    from casa_hub.tokens import keyring
    from casa_hub.tokens.keys import KeyError_

    directory = Path(args.key_dir)
    try:
        if args.action == "add-next":
            key = keyring.add_next(directory, args.alg)
            print(f"created {key.source} (kid {key.kid}); it is published now and signs after "
                  f"`casa-hub keys promote` (wait at least {keyring.DEFAULT_MIN_PUBLISHED} s)")
        elif args.action == "promote":
            new, old = keyring.promote(directory, args.min_published, force=args.force)
            print(f"{new} signs now; {old} is retired and stays published until its tokens expire")
        elif args.action == "prune":
            gone = keyring.prune(directory, args.max_lifetime)
            print("removed " + ", ".join(gone) if gone else "no retired key has expired yet")
        ring = keyring.load_keyring(directory, args.max_lifetime)
    except KeyError_ as e:
        print(f"casa-hub keys: error: {e}", file=sys.stderr)
        return 1
    for d in ring.describe():
        print(f"  {d['role']:<8} {d['alg']}  kid {d['kid']}  {d['file']}")
    for name in ring.expired_files:
        print(f"  expired  {name} (no longer published; `casa-hub keys prune` removes it)")
    return 0
