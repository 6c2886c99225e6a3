"""Starting and stopping a local cluster from the command line.

:func:`start_cluster` checks what ``ambit up`` needs (root, tools, free
addresses, valid manifests, no cluster already there), starts the daemon
detached and waits until it reports ``ready`` or ``failed``.
:func:`stop_cluster` asks the daemon to remove everything and, if the daemon
is gone or does not answer, removes what the state file records itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from k8s.local import api, network
from k8s.local.config import ClusterConfig, files_of, new_cluster_id, parse_cidr
from k8s.local.daemon import forget_state, remove_recorded
from k8s.local.errors import AlreadyRunningError, LocalClusterError
from k8s.local.objects import load_objects
from k8s.local.processes import kill_recorded
from k8s.local.state import StateFile, StateRecord, is_alive, read_state

POLL_SECONDS = 0.05
DOWN_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class StartResult:
    ok: bool
    message: str
    daemon_pid: int


def daemon_running(record: StateRecord | None) -> bool:
    return record is not None and record.daemon is not None and is_alive(record.daemon)


async def start_cluster(
    state_dir: Path,
    paths: Sequence[str],
    pod_cidr: str,
    service_cidr: str,
    ready_seconds: float,
    notes: list[str],
) -> StartResult:
    """Start a cluster; raises :class:`LocalClusterError` for anything checked up front."""
    network.check_prerequisites()
    state_file, _, daemon_log = files_of(state_dir)
    record = read_state(state_file)
    if record is not None and record.daemon is not None and is_alive(record.daemon):
        raise AlreadyRunningError(
            f"a local cluster is already running from {state_dir} (daemon pid"
            f" {record.daemon.pid}, {record.phase}): change it with 'ambit apply -f FILE'"
            " or remove it with 'ambit down'"
        )
    if record is not None:
        notes.append(f"removing what a previous cluster in {state_dir} left behind")
        await stop_cluster(state_dir)
    documents = load_objects(paths)  # refuse bad manifests before touching anything
    notes += [f"warning: {d.ignored}" for d in documents if d.ignored is not None]
    config = _new_config(state_dir, pod_cidr, service_cidr)
    await network.check_addresses(config)
    argv, env = _daemon_command(config, paths, ready_seconds)
    with _open_log(daemon_log) as out:
        daemon = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=env,
            start_new_session=True,
        )
    with trio.move_on_after(ready_seconds + 10):
        while True:
            record = read_state(state_file)
            mine = (
                record is not None
                and record.daemon is not None
                and (record.daemon.pid == daemon.pid)
            )
            if record is not None and mine and record.phase in ("ready", "failed"):
                ok = record.phase == "ready"
                message = (
                    ""
                    if ok
                    else (
                        f"{record.error}\nThe cluster is still up so you can look at it"
                        " ('ambit get pods -A', 'ambit logs ...'); remove it with 'ambit down'."
                    )
                )
                return StartResult(ok, message, daemon.pid)
            if record is not None and mine and record.phase == "aborted":
                with trio.move_on_after(5):
                    await daemon.wait()
                forget_state(state_dir)
                return StartResult(False, record.error or "aborted", daemon.pid)
            if daemon.poll() is not None:
                tail = _tail(daemon_log)
                await stop_cluster(state_dir)
                return StartResult(
                    False,
                    f"the local cluster daemon exited ({daemon.returncode}):\n{tail}",
                    daemon.pid,
                )
            await trio.sleep(POLL_SECONDS)
    return StartResult(
        False,
        f"the daemon did not report ready within {ready_seconds + 10:.0f}s;"
        " see 'ambit logs controlplane', then 'ambit down'",
        daemon.pid,
    )


async def stop_cluster(state_dir: Path) -> list[str]:
    """Remove the cluster of ``state_dir``; returns problems left (empty: all gone).
    Safe to run twice: with nothing recorded it does nothing."""
    state_file, socket_path, _ = files_of(state_dir)
    record = read_state(state_file)
    if record is None:
        return []
    if daemon_running(record):
        assert record.daemon is not None
        try:
            await api.call(socket_path, {"op": "down"}, seconds=DOWN_TIMEOUT_SECONDS)
        except LocalClusterError:
            os.kill(record.daemon.pid, signal.SIGTERM)
        with trio.move_on_after(10):
            while is_alive(record.daemon):  # noqa: ASYNC110 - not our child: nothing to wait on
                await trio.sleep(POLL_SECONDS)
        await trio.to_thread.run_sync(kill_recorded, [record.daemon])
    record = read_state(state_file)
    problems: list[str] = []
    if record is not None:  # the daemon died or did not finish: clean up from the record
        problems = await remove_recorded(StateFile(state_file, record))
    if not problems:
        forget_state(state_dir)
    return problems


def _new_config(state_dir: Path, pod_cidr: str, service_cidr: str) -> ClusterConfig:
    pods = parse_cidr(pod_cidr, "pod CIDR")
    services = parse_cidr(service_cidr, "service CIDR")
    for _ in range(16):
        config = ClusterConfig(state_dir, new_cluster_id(), pods, services)
        if not Path(f"/sys/class/net/{config.bridge}").exists():
            return config
    raise LocalClusterError("could not find a free cluster id; remove stale 'amb-*' bridges")


def _daemon_command(
    config: ClusterConfig, paths: Sequence[str], ready_seconds: float
) -> tuple[list[str], dict[str, str]]:
    """``ambit local-daemon ...``, importable from this source tree wherever it runs."""
    source_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    argv = [
        sys.executable, "-m", "ambit.cli", "--log-format", "json", "local-daemon",
        "--state-dir", str(config.state_dir), "--cluster-id", config.cluster_id,
        "--pod-cidr", str(config.pod_cidr), "--service-cidr", str(config.service_cidr),
        "--ready-timeout", str(ready_seconds),
        *[arg for path in paths for arg in ("-f", str(Path(path).absolute()))],
    ]  # fmt: skip
    return argv, env


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no daemon log)"
