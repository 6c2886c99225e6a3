"""Listening sockets and the one accept loop every ambit server uses.

:func:`serve_listeners` follows ``trio.serve_listeners``, with what a proxy
needs on top:

- the handlers run in a nursery the *caller* owns, so a drain can stop
  accepting (cancel the accept loops) while the streams already accepted
  finish in their own time;
- each connection has a boundary: if its handler raises, one
  ``connection_failed`` event is logged with a typed reason
  (:class:`~mesh.reason.Reason`: ``connection_reset`` for I/O errors,
  ``internal_error`` with the traceback for anything else, which is a bug)
  and only that connection is closed; every other connection on the listener
  goes on, and the listener keeps accepting;
- only the capacity errors of ``accept`` (EMFILE, ENFILE, ENOMEM, ENOBUFS) are
  retried, with backoff, and logged once per burst; any other error ends the
  loop (an ``EBADF`` must not flood the log forever).

:func:`reset_on_close` makes a connection refused under load cheap to close.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import structlog
import trio

from mesh.backoff import Backoff
from mesh.reason import Reason

log = structlog.get_logger("mesh.net")

ConnectionHandler = Callable[[trio.SocketStream], Awaitable[None]]

CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_BACKOFF = Backoff(initial=0.01, maximum=1.0)
_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger: on, 0 seconds


async def open_listener(
    host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False
) -> trio.socket.SocketType:
    """A listening TCP socket with SO_REUSEADDR; closed again if binding fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    return await listen_on(sock, host, port, backlog, reuse_port=reuse_port)


async def listen_on(
    sock: trio.socket.SocketType,
    host: str,
    port: int,
    backlog: int = 1024,
    *,
    reuse_port: bool = False,
) -> trio.socket.SocketType:
    """Make ``sock`` listen on ``host:port`` (SO_REUSEADDR); closed again if that fails.

    ``reuse_port`` (SO_REUSEPORT) lets a second process of the same user listen on the
    same port beside this one, the kernel spreading new connections over both: how a
    new ztunnel takes over a node's ports before the old one stops accepting. When one
    of them closes, the connections still queued in its backlog move to the other
    where ``net.ipv4.tcp_migrate_req`` is 1 (:func:`mesh.capture.install_capture` sets
    it in every captured pod); otherwise they would be reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_listeners(
    handler: ConnectionHandler,
    listeners: Sequence[trio.socket.SocketType | trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
    name: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener until cancelled, each connection handled in
    ``handler_nursery`` behind its own boundary; ``task_status.started()`` once all
    accept. The listeners are closed when this returns."""
    wrapped = [
        sock if isinstance(sock, trio.SocketListener) else trio.SocketListener(sock)
        for sock in listeners
    ]
    try:
        async with trio.open_nursery() as accepting:
            for listener in wrapped:
                accepting.start_soon(_accept_loop, listener, handler, handler_nursery, name)
            task_status.started()
    finally:
        for listener in wrapped:
            listener.socket.close()


async def _accept_loop(
    listener: trio.SocketListener,
    handler: ConnectionHandler,
    handler_nursery: trio.Nursery,
    name: str,
) -> None:
    next_delay = CAPACITY_BACKOFF.delays()
    exhausted = False
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            if not exhausted:
                exhausted = True
                log.error(
                    "accept_capacity_exhausted",
                    listener=name,
                    reason=os.strerror(exc.errno or 0),
                    hint="too many open connections or files: raise the file limit"
                    " (ulimit -n / LimitNOFILE) or the memory limit",
                )
            await trio.sleep(next_delay())
            continue
        if exhausted:
            exhausted = False
            next_delay = CAPACITY_BACKOFF.delays()
            log.info("accept_capacity_recovered", listener=name)
        handler_nursery.start_soon(partial(_serve_connection, handler, stream, name))


async def _serve_connection(
    handler: ConnectionHandler, stream: trio.SocketStream, name: str
) -> None:
    """Run ``handler(stream)`` behind the per-connection boundary; always close ``stream``."""
    src = _peer(stream)  # now: the handler may have closed the socket when it fails
    try:
        await handler(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info(
            "connection_failed",
            listener=name,
            src=src,
            reason=Reason.CONNECTION_RESET.value,
            error=str(exc) or type(exc).__name__,
        )
    except Exception as exc:
        log.error(
            "connection_failed",
            listener=name,
            src=src,
            reason=Reason.INTERNAL_ERROR.value,
            error=repr(exc),
            exc_info=True,
        )
    finally:
        await trio.aclose_forcefully(stream)


def reset_on_close(sock: trio.socket.SocketType) -> None:
    """Make closing ``sock`` send RST at once instead of FIN (``SO_LINGER`` 0): no
    handshake to wait for and no TIME_WAIT left behind, and the client learns at once
    that it was refused. Harmless if the client is gone already."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def _peer(stream: trio.SocketStream) -> str | None:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return None
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or None
