"""An HBONE CONNECT stream as a ``trio.abc.HalfCloseableStream``, and the
server side's view of a CONNECT request before it is answered.

Mapping to HTTP/2: ``send_eof`` is END_STREAM; ``receive_some`` returns
``b""`` after the peer's END_STREAM; a reset by the peer, or a failed
connection, is ``trio.BrokenResourceError``; ``aclose`` ends our side and
cancels the peer's if it is still open.
"""

from __future__ import annotations

import ipaddress
import operator
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
import trio
from h2.errors import ErrorCodes

from mesh import sockio
from mesh.reason import REASON_HEADER, Reason

if TYPE_CHECKING:
    from mesh.hbone.connection import HboneConnection

log = structlog.get_logger("mesh.hbone")


class HboneStream(trio.abc.HalfCloseableStream):
    """One CONNECT tunnel. Create through :class:`~mesh.hbone.connection.HboneConnection`."""

    def __init__(
        self, conn: HboneConnection, stream_id: int, send_window: int, recv_window: int
    ) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._send_window = send_window
        self._recv_window = recv_window
        self._unacked = 0
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already returned
        self._buffered = 0
        self._local_eof = False
        self._remote_eof = False
        self._reset_code: int | None = None
        self._reset_by_peer = False
        self._closed = False
        self._detached = False  # out of the connection's table; flow control settled
        self._sending = False
        self._receiving = False
        # send_to: the socket DATA goes into, whether its task holds unsent bytes,
        # and how many bytes reached that socket.
        self._sink: trio.socket.SocketType | None = None
        self._sink_busy = False
        self.delivered = 0
        self._send_lot = trio.lowlevel.ParkingLot()
        self._recv_lot = trio.lowlevel.ParkingLot()
        self.status: int | None = None
        self.response_headers: list[tuple[str, str]] = []

    @property
    def connection(self) -> HboneConnection:
        return self._conn

    # ---- called by the connection (sync) ---------------------------------------

    def _accepts_data(self) -> bool:
        return not self._remote_eof and self._reset_code is None and self._conn.error is None

    def _direct_sink(self) -> trio.socket.SocketType | None:
        """The socket the reader may write this stream's next DATA into, now."""
        if self._sink is None or self._sink_busy or self._buffered:
            return None  # keep the order: what waits goes first, through send_to
        return self._sink

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._recv_lot.unpark_all()

    def _on_response(self, headers: list[tuple[str, str]]) -> None:
        self.response_headers = headers
        status = dict(headers).get(":status", "0")
        self.status = int(status) if status.isdigit() else 0
        self._recv_lot.unpark_all()

    def _on_reset(self, code: int, *, by_peer: bool) -> None:
        if self._reset_code is None:
            self._reset_code = code
            self._reset_by_peer = by_peer
        self._wake_all()

    def _wake_all(self) -> None:
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()

    def _discard_buffer(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._buffered = 0

    def _broken(self) -> trio.BrokenResourceError:
        if self._conn.error is not None:
            err = trio.BrokenResourceError(f"HBONE connection failed: {self._conn.error.reason}")
            err.__cause__ = self._conn.error
            return err
        code = self._reset_code or 0
        name = ErrorCodes(code).name if code in ErrorCodes._value2member_map_ else str(code)
        who = "peer" if self._reset_by_peer else "us"
        return trio.BrokenResourceError(f"HBONE stream reset by {who} ({name})")

    def _is_broken(self) -> bool:
        return self._reset_code is not None or self._conn.error is not None

    # ---- client side: the answer to CONNECT ------------------------------------

    async def _wait_response(self) -> None:
        from mesh.hbone.settings import HboneStreamRefused

        while self.status is None:
            if self._is_broken():
                if self._conn.error is not None:
                    raise self._conn.error
                raise HboneStreamRefused(None, Reason.CONNECTION_RESET, str(self._broken()))
            await self._recv_lot.park()
        if self.status != 200:
            code = dict(self.response_headers).get(REASON_HEADER)
            raise HboneStreamRefused(self.status, Reason.from_code(code))

    # ---- trio.abc.SendStream ---------------------------------------------------

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("HBONE stream was closed")
        if self._local_eof:
            raise trio.ClosedResourceError("can't send after send_eof")
        if self._is_broken():
            raise self._broken()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HBONE stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_send()
            view = memoryview(data)
            if view.itemsize != 1 or view.ndim != 1:
                view = view.cast("B")
            conn = self._conn
            waited = False
            while view:
                allowed = conn._send_capacity(self)
                while allowed <= 0:
                    await self._wait_space()
                    waited = True
                    self._check_send()
                    allowed = conn._send_capacity(self)
                n = min(allowed, len(view))
                conn._queue_data(self, view[:n])
                view = view[n:]
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def _wait_space(self) -> None:
        waiters = self._conn._space_waiters
        waiters.add(self)
        try:
            await self._send_lot.park()
        finally:
            waiters.discard(self)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HBONE stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_send()
            if self._conn._send_capacity(self) > 0:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            while self._conn._send_capacity(self) <= 0:
                await self._wait_space()
                self._check_send()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HBONE stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("HBONE stream was closed")
        if not self._local_eof:
            if self._is_broken():
                raise self._broken()
            self._local_eof = True
            self._conn._end_stream(self)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # ---- trio.abc.ReceiveStream ------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this HBONE stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("HBONE stream was closed")
                if self._buffered:
                    data = self._take(max_bytes) if max_bytes else self._take_chunk()
                    self._conn._credit(self, len(data))
                    break
                if self._remote_eof:
                    data = b""
                    break
                if self._is_broken():
                    raise self._broken()
                await self._recv_lot.park()
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def send_to(self, sock: trio.socket.SocketType) -> None:
        """Copy what the peer sends into ``sock`` until its END_STREAM.

        The receiving side of a relay, without a task switch or a copy per chunk:
        while this runs, the connection's reader writes each DATA payload straight
        from its receive buffer into ``sock`` when the socket takes it all at once.
        What it does not take waits in the stream and is sent from here, waiting
        for room. Credit goes back as bytes are taken for the socket (one chunk
        at most is in hand); :attr:`delivered` counts what reached it. An
        ``OSError`` of the socket propagates (the relay maps it)."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this HBONE stream")
        self._receiving = True
        self._sink = sock
        yielder = sockio.Yielder()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("HBONE stream was closed")
                if self._buffered:
                    data = self._take_chunk()
                    # Credit as it is taken, as receive_some does: a send cancelled
                    # half-way (the app reset) must not keep the window it held.
                    self._conn._credit(self, len(data))
                    self._sink_busy = True
                    try:
                        await sockio.send_all(sock, data)
                    finally:
                        self._sink_busy = False
                    self.delivered += len(data)
                    await yielder.tick()
                    continue
                if self._remote_eof:
                    return
                if self._is_broken():
                    raise self._broken()
                await self._recv_lot.park()
        finally:
            self._sink = None
            self._receiving = False

    def _take_chunk(self) -> bytes:
        """The next received chunk (one DATA frame's payload), as it arrived: no copy."""
        chunk = self._chunks.popleft()
        if self._head:
            chunk = chunk[self._head :]
            self._head = 0
        self._buffered -= len(chunk)
        return chunk

    def _take(self, limit: int) -> bytes:
        chunks = self._chunks
        parts: list[bytes] = []
        got = 0
        while chunks and got < limit:
            chunk = chunks[0]
            head = self._head
            avail = len(chunk) - head
            take = min(avail, limit - got)
            if take == avail:
                parts.append(chunk if head == 0 else chunk[head:])
                chunks.popleft()
                self._head = 0
            else:
                parts.append(chunk[head : head + take])
                self._head = head + take
            got += take
        self._buffered -= got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # ---- trio.abc.AsyncResource ------------------------------------------------

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn._close_stream(self)
            self._wake_all()
        await trio.lowlevel.checkpoint()


class HboneRequest:
    """A CONNECT request received by a server, before it is answered.

    The handler answers exactly once: :meth:`accept` (200, returns the stream)
    or :meth:`reject` (401/403 denied, 400 bad request, 503 upstream failed).
    """

    def __init__(
        self, conn: HboneConnection, stream: HboneStream, headers: list[tuple[str, str]]
    ) -> None:
        self.connection = conn
        self.stream = stream
        self.headers = headers
        self.peer = conn.peer
        fields = dict(headers)
        self.method = fields.get(":method", "")
        self.authority = fields.get(":authority", "")
        self.answered = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def problem(self) -> str | None:
        """Why this is not a valid HBONE CONNECT, or None."""
        if self.method != "CONNECT":
            return f"method {self.method!r} is not CONNECT"
        if self.stream._remote_eof:
            return "CONNECT request ended its stream"
        try:
            self.destination()
        except ValueError as exc:
            return str(exc)
        return None

    def destination(self) -> tuple[str, int]:
        """The ``(ip, port)`` named by ``:authority``."""
        host, sep, port = self.authority.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f":authority {self.authority!r} is not ip:port")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f":authority {self.authority!r} does not name an IP address") from None
        return host, int(port)

    async def accept(self, headers: Sequence[tuple[str, str]] = ()) -> HboneStream:
        """Answer 200 and return the stream, now carrying the tunnelled bytes."""
        self._respond(200, headers, end_stream=False)
        await trio.lowlevel.checkpoint()
        return self.stream

    async def reject(self, reason: Reason) -> None:
        """Answer with the reason's status and its code in an ``ambit-reason`` header, and end
        the stream. Only the code leaves: the caller logs the details on its side."""
        self.reject_nowait(reason)
        await trio.lowlevel.checkpoint()

    def reject_nowait(self, reason: Reason) -> None:
        self._respond(reason.status, [(REASON_HEADER, reason.value)], end_stream=True)
        conn = self.connection
        if not self.stream._remote_eof:
            conn._reset_stream(self.stream, ErrorCodes.NO_ERROR)

    def _respond(
        self, status: int, headers: Sequence[tuple[str, str]], *, end_stream: bool
    ) -> None:
        if self.answered:
            raise RuntimeError("this CONNECT request was already answered")
        self.answered = True
        conn = self.connection
        if conn.error is not None:
            raise trio.BrokenResourceError(f"HBONE connection failed: {conn.error.reason}")
        conn.h2.send_headers(
            self.stream.stream_id, [(":status", str(status)), *headers], end_stream=end_stream
        )
        if end_stream:
            self.stream._local_eof = True
        conn._kick()
