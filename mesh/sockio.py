"""Socket reads and writes without Trio's extra scheduler pass.

``trio.socket`` methods end every successful call with a trip through the
scheduler (``cancel_shielded_checkpoint``) even when the kernel was ready. A
relay does a read and a write per request and per hop, so these helpers try
the non-blocking call first and wait (a checkpoint) only when the kernel says
it would block. A loop built on them checkpoints on its own now and then
(:class:`Yielder`) so that a busy stream never starves the other tasks.

The file descriptor is asked of the socket at every call, never kept: a
closed socket says -1 (``EBADF``), where a kept number could by then name
another connection.
"""

from __future__ import annotations

import os

import trio

YIELD_EVERY = 16  # passes of a loop between two checkpoints of its own


def recv_nowait(sock: trio.socket.SocketType, buf: bytearray | memoryview) -> int | None:
    """Read what the kernel has now into ``buf``: the count, 0 at end of stream, None if none."""
    try:
        return os.readv(sock.fileno(), (buf,))
    except BlockingIOError:
        return None


async def recv_into(sock: trio.socket.SocketType, buf: bytearray | memoryview) -> int:
    """Like ``socket.recv_into``: at least one byte, or 0 at end of stream."""
    while (n := recv_nowait(sock, buf)) is None:
        await trio.lowlevel.wait_readable(sock)
    return n


async def send_all(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data``, waiting for room when the socket buffer is full."""
    view = memoryview(data)
    while view := view[send_nowait(sock, view) :]:
        await trio.lowlevel.wait_writable(sock)


def send_nowait(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> int:
    """Write what the socket takes now, without blocking; the count (0 when it is full)."""
    try:
        return os.write(sock.fileno(), data)
    except BlockingIOError:
        return 0


class BufferPool:
    """Read buffers lent to a task only while it has bytes in hand.

    A relay that held its own buffer would keep it through every idle moment
    of its connection; with a thousand idle connections that is most of a
    proxy's memory. Trio runs one task at a time per thread, so the pool needs
    no lock; buffers are not shared across threads.
    """

    __slots__ = ("_free", "keep", "size")

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        if len(self._free) < self.keep:
            self._free.append(buf)


class Yielder:
    """A checkpoint every ``YIELD_EVERY`` calls of :meth:`tick`."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    async def tick(self) -> None:
        self._count += 1
        if self._count >= YIELD_EVERY:
            self._count = 0
            await trio.lowlevel.checkpoint()
