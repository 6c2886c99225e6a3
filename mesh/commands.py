"""The one way ambit runs a system command (``ip``, ``iptables-restore``, ``nsenter``):
bounded in time, its error output kept for the message, never through a shell."""

from __future__ import annotations

from collections.abc import Sequence

import trio

COMMAND_TIMEOUT_SECONDS = 15.0
# What ip/iptables say when the thing to remove is already gone.
_GONE = (
    "Cannot find device",
    "No such device",
    "No such file",
    "does not exist",
    "Bad rule",
    "No chain",
)


class CommandFailed(Exception):
    """A system command could not run, exited non-zero or did not finish in time."""


async def run_command(
    argv: Sequence[str],
    stdin: bytes = b"",
    *,
    ok_if_gone: bool = False,
    seconds: float = COMMAND_TIMEOUT_SECONDS,
) -> str:
    """Run ``argv`` and return its standard output; raise :class:`CommandFailed` on failure.

    With ``ok_if_gone``, a failure that only says the object is already gone counts as
    success (removals are idempotent)."""
    command = " ".join(argv)
    try:
        with trio.fail_after(seconds):
            result = await trio.run_process(
                list(argv), stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
            )
    except trio.TooSlowError:
        raise CommandFailed(f"'{command}' did not finish in {seconds:g}s") from None
    except OSError as exc:
        raise CommandFailed(f"cannot run '{argv[0]}': {exc.strerror}") from None
    error = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0:
        if ok_if_gone and any(marker in error for marker in _GONE):
            return ""
        raise CommandFailed(f"'{command}' failed (exit {result.returncode}): {error}")
    return result.stdout.decode(errors="replace")
