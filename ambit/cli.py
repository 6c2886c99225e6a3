"""The ``ambit`` command: parses arguments and starts the part asked for.

Each group of subcommands lives in its own ``ambit/cmd_*.py`` module with a
``register(subparsers)`` function; this module only assembles them.
"""

from __future__ import annotations

import argparse
import os
import signal
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
    args, extra = parser.parse_known_args(argv)
    if len(extra) == 1 and not extra[0].startswith("-") and getattr(args, "name", "") is None:
        args.name = extra[0]  # kubectl's order too: ambit get services -n NS NAME
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    from mesh.telemetry import configure_logging

    json = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(args.log_level, json=json)
    try:
        result: int = args.run(args)
    except BrokenPipeError:  # ambit logs ... | head: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # as a command killed by SIGPIPE reports it
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
