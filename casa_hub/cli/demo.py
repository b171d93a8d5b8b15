"""``casa-hub demo``: run the embedded demo facility on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

HELP = "run the embedded demo facility on 127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=".casa-demo", help="kept between runs (default: ./.casa-demo)")
    parser.add_argument("--port", type=int, default=8000, help="public hub port (default 8000)")
    parser.add_argument("--idp-port", type=int, default=8089, help="demo identity provider port (default 8089)")
    parser.add_argument("--node-modules", default=None,
                        help="node_modules with oidc-provider and configurable-http-proxy")
    parser.add_argument("--no-dask", action="store_true", help="no Dask Gateway, no per-user Dask cluster")
    parser.add_argument("--no-mlflow", action="store_true", help="no MLflow tracking server")
    parser.add_argument("--no-xcache", action="store_true",
                        help="no data cache (XRootD origin + XCache); notebooks then read the sample data from local files")


def run(args: argparse.Namespace) -> int:
    from casa_hub.demo.facility import DemoError, DemoFacility

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
            dask=not args.no_dask, mlflow=not args.no_mlflow, xcache=not args.no_xcache,
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
        if facility.data_cache is not None:
            print(f"  Data cache (XCache): {facility.data_cache.url}  namespace /store "
                  "(/store/data: the sample data, /store/user/<name>: each physicist's own)")
        if facility.mlflow_enabled:
            print(f"  MLflow tracking server: {facility.mlflow_url} (sign in with a facility token of the mlflow grant)")
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
