"""``ambit local-daemon``: the long-lived process that owns a local cluster.

It records itself in the state file, serves the API, builds the cluster from
the manifests, marks the state ``ready`` (or ``failed`` with the reason) for
``ambit up`` to see, and runs until ``down`` or SIGTERM/SIGINT, when it
removes everything it made. A failure to build the network tears the cluster
down at once; a pod that exits or never gets ready leaves it up, marked
``failed``, so its logs can be read. :func:`remove_recorded` is the clean-up
shared with ``ambit down``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from k8s.local import network
from k8s.local.api import AfterReply, serve_api, snapshot_json
from k8s.local.cluster import LocalCluster
from k8s.local.config import ClusterConfig, files_of
from k8s.local.errors import LocalClusterError
from k8s.local.hooks import LocalHooks
from k8s.local.objects import load_objects, read_manifest_text, read_manifests
from k8s.local.processes import kill_recorded
from k8s.local.state import ProcessRecord, StateFile, StateRecord, process_start_time
from k8s.manifests import Document
from k8s.store import ObjectStore, describe

log = structlog.get_logger("ambit.local.daemon")

TEARDOWN_SECONDS = 30.0


async def run_daemon(
    config: ClusterConfig, paths: Sequence[str], hooks: LocalHooks, ready_timeout: float
) -> int:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    me = ProcessRecord(os.getpid(), process_start_time(os.getpid()) or 0, "daemon")
    state = StateFile(
        config.state_file,
        StateRecord(
            cluster_id=config.cluster_id,
            pod_cidr=str(config.pod_cidr),
            service_cidr=str(config.service_cidr),
            daemon=me,
            paths=[str(config.state_dir / "logs"), str(config.socket_path)],
        ),
    )
    log.info(
        "daemon_starting", cluster_id=config.cluster_id, pid=me.pid, state_dir=str(config.state_dir)
    )
    stop = trio.Event()
    torn_down = False
    left_behind: list[str] = []
    async with trio.open_nursery() as nursery:
        cluster = LocalCluster(config, state, hooks, nursery)

        async def shut_down() -> None:
            nonlocal torn_down
            if torn_down:
                return
            torn_down = True
            state.set_phase("stopping")
            log.info("daemon_stopping", cluster_id=config.cluster_id)
            with trio.CancelScope(shield=True):
                try:
                    await cluster.teardown()
                except Exception:  # what is left is still recorded: remove it from the record
                    log.exception("teardown_failed", cluster_id=config.cluster_id)
                left_behind[:] = await remove_recorded(state)

        async def handle(request: dict[str, Any]) -> Any:
            op = request.get("op")
            if op == "status":
                return {
                    "phase": state.record.phase,
                    "error": state.record.error,
                    "cluster_id": config.cluster_id,
                    "pid": me.pid,
                }
            if op == "get":
                await cluster.refresh_mesh_state()
                return snapshot_json(cluster.snapshot())
            if op == "restart":
                return await cluster.restart(str(request.get("component", "")))
            if op == "components":
                return cluster.components()
            if op == "objects":
                return cluster.objects_json(
                    str(request.get("kind", "")), request.get("namespace"), request.get("name")
                )
            if op == "delete" and "refs" in request:  # ambit delete KIND NAME...
                result = await cluster.delete(stored(cluster.store, request["refs"]))
                return dataclasses.asdict(result)
            if op in ("apply", "delete"):
                if "manifest" in request:  # YAML text (ambit waypoint) instead of files
                    source = str(request.get("source", "<request>"))
                    documents = read_manifest_text(str(request["manifest"]), source)
                else:
                    paths = [str(p) for p in request.get("paths", [])]
                    documents = await trio.to_thread.run_sync(read_manifests, paths)
                change = cluster.apply if op == "apply" else cluster.delete
                result = await change(documents)
                return dataclasses.asdict(result)
            if op == "down":
                await shut_down()
                return AfterReply({"stopped": True}, stop.set)
            raise LocalClusterError(f"unknown operation {op!r}")

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    await shut_down()
                    stop.set()
                    return

        async def build() -> None:
            try:
                documents = await trio.to_thread.run_sync(load_objects, list(paths))
                await cluster.start()
                result = await cluster.apply(documents)
                if result.errors:
                    raise LocalClusterError("\n".join(result.errors))
            except LocalClusterError as exc:
                log.error("cluster_build_failed", reason=str(exc))
                await shut_down()
                # Kept for 'ambit up' to read; it removes the record after reporting.
                state.set_phase("aborted", f"{exc} (nothing was left running)")
                stop.set()
                return
            await _wait_ready(cluster, state, ready_timeout)

        try:
            nursery.start_soon(watch_signals)
            await nursery.start(serve_api, config.socket_path, handle)
            nursery.start_soon(build)
            await stop.wait()
        finally:
            # Cancelled or crashed: still remove everything, within a deadline.
            with trio.CancelScope(shield=True), trio.move_on_after(TEARDOWN_SECONDS):
                await shut_down()
            nursery.cancel_scope.cancel()
    if state.record.phase == "aborted":
        log.info("daemon_stopped", cluster_id=config.cluster_id, reason="build failed")
        return 1
    if left_behind:  # keep the record: 'ambit down' retries from it and reports
        log.error("daemon_stopped", cluster_id=config.cluster_id, left_behind=left_behind)
        return 1
    forget_state(config.state_dir)
    log.info("daemon_stopped", cluster_id=config.cluster_id, reason="down")
    return 0


async def _wait_ready(cluster: LocalCluster, state: StateFile, ready_timeout: float) -> None:
    try:
        with trio.fail_after(ready_timeout):
            await cluster.wait_ready()
    except trio.TooSlowError:
        try:
            reason = "; ".join(await cluster.not_ready())
        except LocalClusterError as exc:
            reason = str(exc)
        state.set_phase("failed", f"not ready after {ready_timeout:.0f}s: {reason}")
        log.error("cluster_not_ready", reason=reason)
        return
    except LocalClusterError as exc:
        state.set_phase("failed", str(exc))
        log.error("cluster_not_ready", reason=str(exc))
        return
    state.set_phase("ready")
    log.info(
        "cluster_ready", cluster_id=cluster.config.cluster_id, pods=len(cluster.snapshot().pods)
    )


async def remove_recorded(state: StateFile) -> list[str]:
    """Remove everything ``state`` still records; returns what could not be removed.

    Order: processes, namespaces (and what still runs inside), links, host
    rules, files. Each step tolerates things already gone, so it is safe to
    run twice and after a crash.
    """
    problems: list[str] = []
    record = state.record
    survivors = await trio.to_thread.run_sync(kill_recorded, list(record.processes))
    for process in record.processes:
        if process not in survivors:
            state.discard_process(process.pid)
    problems += [f"process {p.pid} ({p.what}) survived SIGKILL" for p in survivors]
    for name in list(record.netns):
        try:
            await network.delete_netns(name)
            state.discard("netns", name)
        except LocalClusterError as exc:
            problems.append(str(exc))
    for link in list(record.links):
        try:
            await network.delete_link(link)
            state.discard("links", link)
        except LocalClusterError as exc:
            problems.append(str(exc))
    for rule in list(record.host_rules):
        try:
            await network.delete_host_rule(rule)
            state.discard_host_rule(rule)
        except LocalClusterError as exc:
            problems.append(str(exc))
    for path in sorted(record.paths, key=len, reverse=True):  # /etc/netns/x before /etc/netns
        network.remove_path(path)
        state.discard("paths", path)
    for problem in problems:
        log.error("cleanup_incomplete", reason=problem)
    return problems


MESH_DIRS = ("ca", "mesh", "nodes")


def forget_state(state_dir: Path) -> None:
    """Last step of a clean stop: the record, the socket, logs, the directory if now empty."""
    state_file, socket_path, _ = files_of(state_dir)
    socket_path.unlink(missing_ok=True)
    shutil.rmtree(state_dir / "logs", ignore_errors=True)
    for made_by_the_mesh in MESH_DIRS:  # the local CA's keys, tokens, node sockets
        shutil.rmtree(state_dir / made_by_the_mesh, ignore_errors=True)
    state_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state_dir.rmdir()


def stored(store: ObjectStore, refs: Iterable[Sequence[str]]) -> list[Document]:
    """The stored objects ``refs`` name (``[kind, namespace, name]``) as documents to
    delete; one that is not there, a document saying so."""
    out = []
    for kind, namespace, name in refs:
        ref = (str(kind), str(namespace), str(name))
        entry = store.get(ref)
        where = describe(ref)
        out.append(Document(where, None, entry.obj if entry else None,
                            None if entry else f"{where} not found"))  # fmt: skip
    return out
