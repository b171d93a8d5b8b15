"""The ``casa-hub`` command."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .demo.facility import DemoError, DemoFacility

    def say(msg: str) -> None:
        try:
            print(f"casa-hub demo: {msg}", flush=True)
        except OSError:  # the terminal or pipe is gone: keep going, stopping matters more
            pass

    try:
        facility = DemoFacility(
            Path(args.state_dir), hub_port=args.port, idp_port=args.idp_port,
            node_modules=args.node_modules, progress=say,
            # a Dask cluster per user (Dask Gateway as a hub service) when dask-gateway-server is installed
            extra_env={"CASA_DEMO_DASK": "0" if args.no_dask else "1"},
        )
    except DemoError as e:
        print(f"casa-hub demo: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        facility.start()
    except DemoError as e:
        print(f"casa-hub demo: error: {e}", file=sys.stderr)
        facility.stop()
        return 1
    try:
        users = facility.users()
        print()
        print(f"  The facility is running: open {facility.hub_url}/ in a browser.")
        print(f"  Identity provider: {facility.idp_url}   Token issuer: {facility.issuer_url}")
        print("  Demo logins (username / password / groups):")
        for u in users:
            print(f"    {u['username']:<6} {u['password']:<14} {', '.join(u['groups'])}")
        print("  alice and bob may use the facility (bob is an admin); eve is not in an allowed group.")
        print(f"  Logs: {facility.log_dir}   Press Ctrl-C to stop everything.", flush=True)
        while not stop.is_set():
            for name, proc in facility.procs.items():
                if proc.poll() is not None:
                    print(f"casa-hub demo: {name} exited unexpectedly (code {proc.returncode}); "
                          f"see {facility.log_dir / (name + '.log')}", file=sys.stderr)
                    stop.set()
                    break
            stop.wait(1.0)
    finally:
        try:
            say("stopping ...")
        finally:
            facility.stop()
        say("stopped")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .tokens import keyring
    from .tokens.keys import KeyError_

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


def _check(args: argparse.Namespace) -> int:
    from .check import run_checks

    report = run_checks(args.config, online=not args.offline)
    for finding in report.findings:
        print(finding)
    errors = sum(f.level == "error" for f in report.findings)
    warnings = sum(f.level == "warn" for f in report.findings)
    print(f"{'FAILED' if errors else 'OK'}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="casa-hub", description="casa_hub: an HEP analysis facility on JupyterHub")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded demo facility on 127.0.0.1")
    demo.add_argument("--state-dir", default=".casa-demo", help="kept between runs (default: ./.casa-demo)")
    demo.add_argument("--port", type=int, default=8000, help="public hub port (default 8000)")
    demo.add_argument("--idp-port", type=int, default=8089, help="demo identity provider port (default 8089)")
    demo.add_argument("--node-modules", default=None, help="node_modules with oidc-provider and configurable-http-proxy")
    demo.add_argument("--no-dask", action="store_true", help="no Dask Gateway, no per-user Dask cluster")
    demo.set_defaults(func=_demo)

    check = sub.add_parser("check", help="validate a hub configuration and the services it names")
    check.add_argument("config", help="the hub's jupyterhub_config.py (drop-in files it loads are included)")
    check.add_argument("--offline", action="store_true", help="do not contact the provider, issuer or services")
    check.set_defaults(func=_check)

    from . import explain

    dry_run = sub.add_parser("explain", help="dry run: the grants, token claims, env, files (and pod and "
                                             "Secret) a user's server would get; no token values")
    explain.add_arguments(dry_run)
    dry_run.set_defaults(func=explain.run_cli)

    keys = sub.add_parser("keys", help="rotate the facility issuer's signing keys in a key directory")
    keys.add_argument("action", choices=["status", "add-next", "promote", "prune"],
                      help="status: list keys by role; add-next: create and publish a next key; "
                           "promote: let the next key sign; prune: remove expired retired keys")
    keys.add_argument("--key-dir", required=True, help="the issuer's key directory (CasaTokenIssuer.key_dir)")
    keys.add_argument("--alg", default="ES256", choices=["ES256", "RS256"], help="algorithm of a new key")
    keys.add_argument("--min-published", type=int, default=600,
                      help="seconds a next key must have been published before it may sign (default 600)")
    keys.add_argument("--force", action="store_true", help="promote even if the next key is newly published")
    keys.add_argument("--max-lifetime", type=int, default=6 * 3600,
                      help="longest token lifetime of any grant, in seconds (default 21600, the maximum)")
    keys.set_defaults(func=_keys)

    from .tokens import renewal_cli

    renew = sub.add_parser("renew-tokens", help="keep the token files in $CASA_TOKEN_DIR fresh (renewal agent)")
    renewal_cli.add_arguments(renew)
    renew.set_defaults(func=renewal_cli.renew_tokens)

    from .tokens import site_config

    site = sub.add_parser("site-config", help="print the XRootD or HTCondor settings that trust the facility issuer")
    site_config.add_arguments(site)
    site.set_defaults(func=site_config.run_cli)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
