"""The node agent's socket for the CNI plugin (docs/node.md, "Plugin to agent"): a unix
stream socket, one request per connection, one JSON line each way.

A request that cannot be read (too long, not JSON, unknown command, too slow) gets an
``error`` answer and one log line; the server keeps serving the others."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
import trio

from mesh.jsonline import receive_object

log = structlog.get_logger("node.cni_server")

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 5.0
ANSWER_TIMEOUT = 25.0  # above the agent's own bounds: an answer always comes

Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def serve_cni(
    path: Path,
    handlers: Mapping[str, Handler],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen at ``path`` (replacing whatever is there; mode 0600) until cancelled."""
    os.makedirs(path.parent, exist_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    log.info("cni_socket_listening", path=str(path))
    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            stream = await listener.accept()
            nursery.start_soon(_serve_one, stream, handlers)


async def _serve_one(stream: trio.SocketStream, handlers: Mapping[str, Handler]) -> None:
    async with stream:
        answer: dict[str, Any]
        command = "?"
        try:
            request = await _read_request(stream)
            command = str(request.get("command") or "")
            handler = handlers.get(command)
            if handler is None:
                raise ValueError(f"unknown command {command!r}")
            with trio.fail_after(ANSWER_TIMEOUT):
                answer = await handler(request)
        except (ValueError, trio.TooSlowError) as exc:
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            log.warning("cni_request_failed", command=command, reason=reason)
            answer = {"error": reason}
        try:
            await stream.send_all(json.dumps(answer).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("cni_plugin_gone", command=command)


async def _read_request(stream: trio.SocketStream) -> dict[str, Any]:
    with trio.move_on_after(READ_TIMEOUT):
        try:
            return await receive_object(stream, MAX_REQUEST)
        except ValueError as exc:
            raise ValueError(f"request: {exc}") from None
    raise ValueError(f"no complete request within {READ_TIMEOUT:.0f} s")
