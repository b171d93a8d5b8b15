"""``casa-hub renew-tokens``: the renewal agent without a Jupyter server (images, batch jobs).

The hub credential comes from ``$JUPYTERHUB_API_TOKEN`` only, never from the command line, so it
does not show in process lists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from casa_hub.tokens.renewal.agent import CasaTokenRenewal

HELP = "keep the token files in $CASA_TOKEN_DIR fresh (renewal agent)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true",
                        help="renew the tokens that are due, then exit (exit code 1 if one could not be renewed)")
    parser.add_argument("--force", action="store_true", help="with --once: renew every token, due or not")
    parser.add_argument("--attempts", type=int, default=5, help="with --once: broker calls per token (default 5)")
    parser.add_argument("--token-dir", default=None, help="token directory (default: $CASA_TOKEN_DIR)")
    parser.add_argument("--api-url", default=None, help="the hub's API URL (default: $JUPYTERHUB_API_URL)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="renew at this fraction of a token's lifetime (default 2/3)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at debug level")


def make_agent(args: argparse.Namespace, log: logging.Logger) -> CasaTokenRenewal:
    kw: dict[str, object] = {"log": log}
    if args.token_dir:
        kw["token_dir"] = args.token_dir
    if args.api_url:
        kw["api_url"] = args.api_url
    if args.fraction is not None:
        kw["renew_fraction"] = args.fraction
    return CasaTokenRenewal(**kw)


async def _run_forever(agent: CasaTokenRenewal) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``casa-hub renew-tokens``."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("casa_hub.renewal")
    try:
        agent = make_agent(args, log)
    except Exception as e:  # a bad --fraction: the trait's message says what is wrong
        print(f"casa-hub renew-tokens: error: {e}", file=sys.stderr)
        return 2
    problem = agent.problem()
    if problem:
        print(f"casa-hub renew-tokens: error: {problem}", file=sys.stderr)
        return 2
    if not args.once:
        asyncio.run(_run_forever(agent))
        return 0
    results = asyncio.run(agent.run_once(force=args.force, attempts=args.attempts))
    for grant, outcome in sorted(results.items()):
        print(f"{grant}: {outcome}")
    if not results:
        print(f"casa-hub renew-tokens: no token files in {agent.token_dir}", file=sys.stderr)
    return 1 if any(o in ("failed", "stopped") for o in results.values()) else 0
