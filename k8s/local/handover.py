"""A hand-over: restart a supervised process without a moment in which nobody serves.

The new process starts beside the old one (both listen with SO_REUSEPORT, the kernel
spreading new connections over them) and writes a ready file once it can serve; only
then is the old one told to stop, and it drains: it stops accepting and what it holds
finishes, up to its drain deadline. If the new one exits or is not ready in time, it is
stopped and the old one keeps serving. Used for a node's ztunnel and a waypoint's pod.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import trio

from k8s.local.errors import LocalClusterError
from k8s.local.processes import Running, Supervisor

log = structlog.get_logger("ambit.local.cluster")


async def hand_over(
    supervisor: Supervisor,
    name: str,
    start: Callable[[], Awaitable[Running]],
    ready_file: Path,
    *,
    ready_timeout: float,
    keep_old: Callable[[Running], None],
) -> Running:
    """Start ``name`` again with ``start``, wait for ``ready_file`` to name the new PID,
    then stop the old process (it drains). On failure the old one is put back (the
    supervisor's record, and ``keep_old`` for the caller's own) and the error raised."""
    old = supervisor.running.get(name)
    await trio.Path(ready_file).unlink(missing_ok=True)
    if old is not None and not old.exited.is_set():
        supervisor.retire(name)
    new = await start()
    log.info("handover_started", component=name, old_pid=old and old.pid, new_pid=new.pid)
    with trio.move_on_after(ready_timeout) as waited:
        while not new.exited.is_set() and ready_pid(ready_file) != new.pid:  # noqa: ASYNC110
            await trio.sleep(0.05)
    if waited.cancelled_caught or new.exited.is_set():
        await supervisor.stop(name)
        if old is not None and not old.exited.is_set():
            supervisor.running[name] = old
            keep_old(old)
        why = f"exited with code {new.exit_code}" if new.exited.is_set() else "not ready"
        raise LocalClusterError(
            f"the new {name} {why} within {ready_timeout:.0f}s; the old one (pid"
            f" {old and old.pid}) keeps serving. See 'ambit logs {name}'"
        )
    if old is not None:
        await supervisor.stop_process(old)  # it drains, then exits
    return new


def ready_pid(path: Path) -> int | None:
    """The PID in a ready file, or None while there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("pid") if isinstance(data, dict) else None
    return pid if isinstance(pid, int) else None
