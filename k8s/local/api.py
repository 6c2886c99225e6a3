"""The daemon's small JSON API on a Unix socket, and its client.

One request per connection: the client sends one JSON object and a newline,
the daemon answers one JSON object (``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``) and closes. Operations: ``status``,
``get``, ``apply`` and ``delete`` (with ``paths``, read by the daemon, or a
``manifest``: YAML text, and its ``source`` for messages), and ``down``. The
socket is ``api.sock`` in the state directory, mode 0600.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from k8s.local.errors import LocalClusterError, NotRunningError
from k8s.local.hooks import LocalSnapshot
from mesh.net import serve_listeners

log = structlog.get_logger("ambit.local.api")

MAX_REQUEST_BYTES = 1 << 20
MAX_REPLY_BYTES = 256 << 20  # a big cluster's 'ambit get' is larger than any request
REQUEST_TIMEOUT_SECONDS = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class AfterReply:
    """A result whose handler wants ``then()`` called once the reply is sent (``down``)."""

    value: Any
    then: Callable[[], None]


async def serve_api(
    path: Path, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer requests on ``path`` with ``handle`` until cancelled.

    ``handle`` returns the result or raises :class:`LocalClusterError`, whose
    message is sent back as the error.
    """
    _remove_stale(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    listener = trio.SocketListener(sock)

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_SECONDS):
                    request = json.loads(
                        await _read_all(stream, until_newline=True, limit=MAX_REQUEST_BYTES)
                    )
            except (trio.TooSlowError, ValueError, trio.BrokenResourceError) as exc:
                log.warning("api_bad_request", reason=type(exc).__name__)
                return
            then: Callable[[], None] | None = None
            try:
                result = await handle(request)
                if isinstance(result, AfterReply):
                    result, then = result.value, result.then
                reply = {"ok": True, "result": result}
            except LocalClusterError as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:
                log.exception("api_request_failed", op=request.get("op"))
                reply = {"ok": False, "error": f"internal error: {exc!r} (see the daemon log)"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except trio.BrokenResourceError:
                log.info("api_client_gone", op=request.get("op"))
            if then is not None:
                then()

    async with trio.open_nursery() as handlers:
        await serve_listeners(
            connection, [listener], handler_nursery=handlers, name="api", task_status=task_status
        )


async def call(path: Path, request: dict[str, Any], seconds: float = 30.0) -> Any:
    """Send ``request`` to the daemon at ``path``; return its result or raise its error."""
    try:
        with trio.fail_after(seconds):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(json.dumps(request).encode() + b"\n")
                reply = json.loads(
                    await _read_all(stream, until_newline=False, limit=MAX_REPLY_BYTES)
                )
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunningError(
            f"no local cluster answers at {path}; start one with 'ambit up -f FILE'"
            " (or point --state-dir / AMBIT_STATE_DIR at the right one)"
        ) from None
    except trio.TooSlowError:
        raise LocalClusterError(
            f"the local cluster daemon did not answer within {seconds:.0f}s;"
            " see 'ambit logs controlplane'"
        ) from None
    except (OSError, ValueError, trio.BrokenResourceError) as exc:
        raise LocalClusterError(f"bad answer from the daemon at {path}: {exc}") from None
    if not reply.get("ok"):
        raise LocalClusterError(str(reply.get("error")))
    return reply.get("result")


def _remove_stale(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _read_all(stream: trio.SocketStream, *, until_newline: bool, limit: int) -> bytes:
    data = bytearray()
    while len(data) <= limit:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if until_newline and data.endswith(b"\n"):
            break
    else:
        raise ValueError("message too large")
    return bytes(data)


def snapshot_json(snapshot: LocalSnapshot) -> dict[str, Any]:
    """What ``ambit get`` shows: pods, nodes and services, JSON-ready."""
    return {
        "cluster_id": snapshot.config.cluster_id,
        "pod_cidr": str(snapshot.config.pod_cidr),
        "service_cidr": str(snapshot.config.service_cidr),
        "host_ip": str(snapshot.config.host_ip),
        "pods": [dataclasses.asdict(p) for p in snapshot.pods],
        "nodes": [dataclasses.asdict(n) for n in snapshot.nodes],
        "services": [dataclasses.asdict(s) for s in snapshot.services],
    }
