"""The ``ambit`` command: parses arguments and starts the part asked for.

Each group of subcommands lives in its own ``ambit/cmd_*.py`` module with a
``register(subparsers)`` function; this module only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ambit import (
    cmd_ca,
    cmd_check,
    cmd_controlplane,
    cmd_dashboard,
    cmd_install,
    cmd_local,
    cmd_node_agent,
    cmd_tap,
    cmd_waypoint,
    cmd_why,
    cmd_ztunnel,
)

COMMAND_MODULES = [
    cmd_local, cmd_waypoint, cmd_ztunnel, cmd_node_agent, cmd_controlplane, cmd_ca, cmd_install,
    cmd_check, cmd_tap, cmd_why, cmd_dashboard,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambit",
        description="ambit: an ambient (sidecarless) service mesh. Run 'ambit COMMAND --help'.",
    )
    parser.add_argument("--version", action="version", version=f"ambit {_version()}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="auto: JSON unless stderr is a terminal",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def _version() -> str:
    try:
        return version("ambit")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    from mesh.telemetry import configure_logging

    json = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(args.log_level, json=json)
    result: int = args.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
