"""The ``casa-hub`` command: one module per sub-command.

Each sub-command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this
module only dispatches. Sub-command modules import what
they need inside ``run``, so a notebook image without the hub's extras can run ``casa-hub renew-tokens``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command -> module in this package
COMMANDS = {
    "demo": "demo",
    "check": "check",
    "explain": "explain",
    "keys": "keys",
    "renew-tokens": "renew_tokens",
    "site-config": "site_config",
}

def build_parser() -> argparse.ArgumentParser:
    """The ``casa-hub`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="casa-hub", description="casa_hub: an HEP analysis facility on JupyterHub")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        command = importlib.import_module(f"{__name__}.{module}")
        command.add_arguments(sub.add_parser(name, help=command.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``casa-hub`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    command = importlib.import_module(f"{__name__}.{COMMANDS[args.command]}")
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())
