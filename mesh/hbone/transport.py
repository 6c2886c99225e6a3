"""What the HTTP/2 engine runs over: a :class:`Transport`, and an adapter for
any ``trio.abc.Stream``.

The engine reads into its own buffer (``receive_into``), queues bytes without
awaiting (``write``) and lets one writer task send them (``flush_batch``).
:class:`mesh.tls.TlsStream` is a Transport as it is (its fast path: records
decrypted into the frame buffer, batches encrypted together, large DATA
encrypted from the sender's buffer, ``sockio`` sends). :class:`StreamTransport`
adapts any other ``trio.abc.Stream``: a memory stream in tests, a TCP stream
for h2c, or an HBONE stream carrying a client's HTTP/2 inside CONNECT (the
waypoint).

Errors of the layer below are :data:`TRANSPORT_ERRORS`; the connection maps
them to its own error at one place.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

from mesh import sockio
from mesh.hbone.stream import H2Stream
from mesh.tls import TlsError


class TransportError(Exception):
    """The byte stream under an HTTP/2 connection broke."""


TRANSPORT_ERRORS: Final = (TransportError, TlsError)


class Transport(Protocol):
    """A byte stream as the engine drives it: one reading task, one writing task."""

    async def receive_into(self, dst: memoryview) -> int:
        """Read at least one byte into ``dst``; 0 only at end of stream."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (copied or encrypted now); never blocks."""
        ...

    def has_output(self) -> bool: ...

    def pending_output(self) -> int:
        """Bytes queued and not yet taken by a flush (bounds the writers)."""
        ...

    async def flush_batch(self) -> None:
        """Send what is queued now (more may be queued meanwhile)."""
        ...

    async def flush(self) -> None:
        """Send everything queued, including what is queued meanwhile."""
        ...

    async def aclose(self) -> None: ...


class StreamTransport:
    """A :class:`Transport` over any ``trio.abc.Stream``.

    One task receives while one other sends, as ``trio.abc.Stream`` allows.
    Written bytes are copied into one buffer and sent by the next flush; they
    leave the buffer once ``send_all`` returned.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._out = bytearray()

    async def receive_into(self, dst: memoryview) -> int:
        try:
            data = await self.stream.receive_some(len(dst))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection lost: {exc}") from exc
        dst[: len(data)] = data
        return len(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._out += data

    def has_output(self) -> bool:
        return bool(self._out)

    def pending_output(self) -> int:
        return len(self._out)

    async def flush_batch(self) -> None:
        if not self._out:
            await trio.lowlevel.checkpoint()
            return
        if isinstance(self.stream, trio.SocketStream):  # h2c: cancel-safe, see below
            await self._flush_socket(self.stream.socket)
            return
        if isinstance(self.stream, H2Stream):  # HTTP/2 inside HBONE: the waypoint's case
            await self._flush_h2(self.stream)
            return
        data = bytes(self._out)
        before = getattr(self.stream, "queued", None)  # an HTTP/2 stream says what it took
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection lost: {exc}") from exc
        except trio.Cancelled:
            if before is not None:  # what the stream took is gone: never sent twice
                del self._out[: getattr(self.stream, "queued", before) - before]
            raise
        # Only now: a flush cancelled before the stream took the bytes keeps them for the
        # next flush (after a cancel part-way, a trio stream is broken anyway).
        del self._out[: len(data)]

    async def _flush_h2(self, stream: H2Stream) -> None:
        """Hand the bytes to the outer connection as its flow control takes them, without
        a scheduler pass when it takes them all (``send_all`` would make one, and its
        writer another): what was taken leaves the buffer at once, so a flush cancelled
        while it waits for the window never sends them twice."""
        try:
            while self._out:
                if n := stream.send_nowait(bytes(self._out)):
                    del self._out[:n]
                else:
                    await stream.wait_send_all_might_not_block()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection lost: {exc}") from exc

    async def _flush_socket(self, sock: trio.socket.SocketType) -> None:
        """Bytes leave the buffer as the kernel takes them: a flush cancelled while it
        waits for room (a connection failing, or ending, cancels its writer) never sends
        them twice; ``SocketStream.send_all`` cancelled part-way would, and the next
        flush (the closing GOAWAY) would tear the frames the peer is reading."""
        try:
            while self._out:
                if n := sockio.send_nowait(sock, self._out):
                    del self._out[:n]
                else:
                    await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            raise TransportError(f"connection lost: {exc}") from exc

    async def flush(self) -> None:
        while self._out:
            await self.flush_batch()

    async def aclose(self) -> None:
        await self.stream.aclose()
