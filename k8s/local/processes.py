"""Processes of the local cluster: pod commands and ztunnels, each in its namespace.

:class:`Supervisor` starts a command through ``ip netns exec NETNS env --``
(``ip`` bind-mounts ``/etc/netns/<netns>/hosts``; ``env`` gives the shell's
exit codes, 127 and 126, for a missing or non-executable command) in a session
of its own, output to a log file, records it in the state file, and reaps it
in a task of the nursery it was given. There is no restart: an exit is
remembered and reported. :func:`kill_recorded` stops a recorded process group
from any process, checking the start time so a recycled PID is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from k8s.local.errors import LocalClusterError
from k8s.local.state import ProcessRecord, StateFile, is_alive, process_start_time
from mesh import cgroups

log = structlog.get_logger("ambit.local.processes")

POD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_GRACE_SECONDS = 2.0
KILL_WAIT_SECONDS = 3.0


@dataclass(eq=False)
class Running:
    key: str
    record: ProcessRecord
    process: trio.Process
    started_at: float = field(default_factory=trio.current_time)
    exited: trio.Event = field(default_factory=trio.Event)
    exit_code: int | None = None
    exited_at: float | None = None  # Trio's clock
    stop_grace: float = 2.0  # between SIGTERM and SIGKILL

    def running_for(self) -> float:
        return 0.0 if self.exited.is_set() else trio.current_time() - self.started_at

    @property
    def pid(self) -> int:
        return self.record.pid


class Supervisor:
    """Owns the cluster's processes; reaping tasks run in ``nursery``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        state: StateFile,
        on_exit: Callable[[Running], None],
        ip_command: str = "ip",
    ) -> None:
        self._nursery = nursery
        self._state = state
        self._on_exit = on_exit
        self._ip = ip_command
        self.running: dict[str, Running] = {}
        self._retired: set[Running] = set()  # handed over, still draining

    async def start(
        self,
        key: str,
        netns: str | None,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        stop_grace: float = STOP_GRACE_SECONDS,
        cgroup: Path | None = None,
    ) -> Running:
        """Run ``argv`` in ``netns`` (None: the host's, e.g. the control plane), in
        ``cgroup`` when given (a pod's, :mod:`mesh.cgroups`); raises
        :class:`LocalClusterError` if it cannot start."""
        if key in self.running and not self.running[key].exited.is_set():
            raise LocalClusterError(f"{key} is already running (pid {self.running[key].pid})")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            try:
                process = await trio.lowlevel.open_process(
                    [self._ip, "netns", "exec", netns, "env", "--", *argv] if netns else argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd="/",
                    start_new_session=True,
                )
            except OSError as exc:
                raise LocalClusterError(f"cannot start {key}: {exc}") from None
        if cgroup is not None:
            self._state.add("paths", str(cgroup.parent))  # `ambit down` removes the group
            try:
                cgroups.join(cgroup, process.pid)
            except OSError as exc:  # the pod runs; only finding it by its cgroup fails
                log.warning("pod_cgroup_failed", what=key, cgroup=str(cgroup), reason=str(exc))
        start_time = process_start_time(process.pid) or 0
        running = Running(
            key, ProcessRecord(process.pid, start_time, key), process, stop_grace=stop_grace
        )
        self._state.add_process(running.record)
        self.running[key] = running
        self._nursery.start_soon(self._reap, running)
        log.info("process_started", what=key, pid=process.pid, netns=netns)
        return running

    async def _reap(self, running: Running) -> None:
        code = await running.process.wait()
        running.exit_code = code
        running.exited_at = trio.current_time()
        running.exited.set()
        self._state.discard_process(running.pid)
        log.info("process_exited", what=running.key, pid=running.pid, exit_code=code)
        self._on_exit(running)

    def retire(self, key: str) -> Running | None:
        """Forget ``key``'s process without stopping it, so a successor can start under
        the same key (a hand-over); the caller stops it with :meth:`stop_process`. The
        state file still records it, so ``ambit down`` kills it if all else fails."""
        running = self.running.pop(key, None)
        if running is not None:
            self._retired.add(running)
        return running

    async def stop(self, key: str) -> None:
        """SIGTERM the process group, SIGKILL after its grace period; forget it."""
        running = self.running.pop(key, None)
        if running is not None:
            await self.stop_process(running)

    async def stop_process(self, running: Running) -> None:
        """SIGTERM ``running``'s process group, SIGKILL after its grace period."""
        self._retired.discard(running)
        key = running.key
        if running.exited.is_set():
            return
        _signal_group(running.pid, signal.SIGTERM)
        with trio.move_on_after(running.stop_grace):
            await running.exited.wait()
        if not running.exited.is_set():
            _signal_group(running.pid, signal.SIGKILL)
            with trio.move_on_after(KILL_WAIT_SECONDS):
                await running.exited.wait()
        if not running.exited.is_set():
            log.warning(
                "process_not_stopped", what=key, pid=running.pid, reason="no exit after SIGKILL"
            )

    async def stop_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for key in list(self.running):
                nursery.start_soon(self.stop, key)
            for running in list(self._retired):
                nursery.start_soon(self.stop_process, running)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def kill_recorded(
    processes: Sequence[ProcessRecord], timeout: float = KILL_WAIT_SECONDS
) -> list[ProcessRecord]:
    """Stop recorded processes (not our children); returns those still alive after ``timeout``.

    Blocking, bounded: used by ``ambit down`` when the daemon is gone.
    """
    alive = [p for p in processes if is_alive(p)]
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, timeout)):
        for process in alive:
            _signal_group(process.pid, sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if is_alive(p)]
        if not alive:
            break
    return alive
