"""Copying bytes both ways between two half-closeable streams.

Each direction ends with ``send_eof`` on the other side, so a TCP half-close
travels through the tunnel (END_STREAM) and back out (``shutdown(SHUT_WR)``).
Reads from a socket go into a buffer lent from a pool for that one read and
write (16 KiB, or 256 KiB once a direction keeps filling them: 64 KiB reads
cost 24-36% of throughput). A direction waiting for data holds no buffer, so
a thousand idle connections cost no buffer memory. The HBONE side copies
what it is given before ``send_all`` returns. Nothing is buffered beyond what
one read returns. ``on_half_close`` hears when the first direction has ended
(the relay is half-closed until the other one ends): :mod:`mesh.pending`
counts such connections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from mesh import sockio
from mesh.hbone.stream import HboneStream

READ_SIZE = 256 * 1024
FIRST_READ_SIZE = 16 * 1024


@dataclass
class RelayStats:
    """Bytes moved, from the point of view of the first stream: ``sent`` went a->b."""

    sent: int = 0
    received: int = 0


# Lent per read (sockio.BufferPool): an idle connection holds no buffer at all.
SMALL_BUFFERS = sockio.BufferPool(FIRST_READ_SIZE, keep=64)
LARGE_BUFFERS = sockio.BufferPool(READ_SIZE, keep=8)


async def _pump(
    src: trio.abc.HalfCloseableStream,
    dst: trio.abc.HalfCloseableStream,
    stats: RelayStats,
    forward: bool,
    ended: Callable[[], None] | None,
) -> None:
    if isinstance(src, trio.SocketStream):
        await _pump_socket(src.socket, dst, stats, forward)
    elif isinstance(src, HboneStream) and isinstance(dst, trio.SocketStream):
        try:
            await src.send_to(dst.socket)  # no task switch per chunk (see send_to)
        except OSError as exc:
            raise trio.BrokenResourceError(f"write failed: {exc}") from exc
        finally:
            if forward:
                stats.sent += src.delivered
            else:
                stats.received += src.delivered
    else:
        yielder = sockio.Yielder()
        dst_sock = dst.socket if isinstance(dst, trio.SocketStream) else None
        while data := await src.receive_some():
            n = len(data)
            await _send(dst, dst_sock, data)
            del data  # not kept while the connection waits for more
            if dst_sock is not None:
                await yielder.tick()  # receive_some checkpoints; sockio.send_all may not
            if forward:
                stats.sent += n
            else:
                stats.received += n
    await dst.send_eof()
    if ended is not None:
        ended()


async def _pump_socket(
    sock: trio.socket.SocketType,
    dst: trio.abc.HalfCloseableStream,
    stats: RelayStats,
    forward: bool,
) -> None:
    """Socket to ``dst``: read with a lent buffer, waiting for data without one."""
    pool = SMALL_BUFFERS
    dst_sock = dst.socket if isinstance(dst, trio.SocketStream) else None
    yielder = sockio.Yielder()
    while True:
        await yielder.tick()  # neither read nor write checkpoints while the kernel is ready
        buf = pool.take()
        try:
            n = sockio.recv_nowait(sock, buf)
            if n:
                await _send(dst, dst_sock, memoryview(buf)[:n])
        except OSError as exc:
            raise trio.BrokenResourceError(f"read failed: {exc}") from exc
        finally:
            pool.give(buf)
        if n is None:
            await trio.lowlevel.wait_readable(sock)  # holding no buffer
            continue
        if not n:
            return
        if n == len(buf) and pool is SMALL_BUFFERS:  # it keeps up: read bigger
            pool = LARGE_BUFFERS
        if forward:
            stats.sent += n
        else:
            stats.received += n


async def _send(
    dst: trio.abc.HalfCloseableStream,
    dst_sock: trio.socket.SocketType | None,
    data: bytes | bytearray | memoryview,
) -> None:
    if dst_sock is None:
        await dst.send_all(data)  # HBONE copies what it is given before returning
        return
    try:
        await sockio.send_all(dst_sock, data)
    except OSError as exc:
        raise trio.BrokenResourceError(f"write failed: {exc}") from exc


async def relay(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    stats: RelayStats | None = None,
    *,
    on_half_close: Callable[[], None] | None = None,
) -> RelayStats:
    """Copy a->b and b->a until both directions have ended; ``on_half_close()`` is called
    once, when the first has (its EOF passed on).

    If either direction breaks, the other is cancelled and the error propagates
    (as the only exception, not a group); the caller closes both streams.
    """
    stats = stats if stats is not None else RelayStats()
    ended = None
    if on_half_close is not None:
        callback = on_half_close
        first = True

        def ended() -> None:
            nonlocal first
            if first:
                first = False
                callback()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, b, a, stats, False, ended)
            await _pump(a, b, stats, True, ended)  # in this task: one task fewer per connection
    except BaseExceptionGroup as group:
        broken = group.subgroup((trio.BrokenResourceError, trio.ClosedResourceError))
        if broken is not None and broken.exceptions:
            raise broken.exceptions[0] from None
        raise
    return stats
