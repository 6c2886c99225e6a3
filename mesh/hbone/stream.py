"""One HTTP/2 stream as a ``trio.abc.HalfCloseableStream``.

Mapping to HTTP/2: ``send_eof`` is END_STREAM (or :meth:`H2Stream.send_trailers`);
``receive_some`` returns ``b""`` after the peer's END_STREAM, whose trailers
are then in :attr:`H2Stream.trailers`; a reset by the peer, or a failed
connection, is ``trio.BrokenResourceError``; ``aclose`` ends our side and
cancels the peer's if it is still open.

The stream knows its connection only through :class:`StreamOwner`, a narrow
protocol the connection implements; the connection drives the stream through
the methods marked "called by the connection". Its protocol state is one
:class:`StreamState`; ``aclose`` additionally closes the Python object, as
for every Trio stream.
"""

from __future__ import annotations

import enum
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio
from h2.errors import ErrorCodes

from mesh import sockio
from mesh.hbone.settings import HboneError, HboneRetryableError, HboneStreamRefused
from mesh.hbone.window import ReceiveWindow, WindowStatistics
from mesh.identity import SpiffeId
from mesh.reason import REASON_HEADER, Reason

Headers = list[tuple[str, str]]


class StreamState(enum.Enum):
    """RFC 9113 §5.1 as the tunnel needs it (idle and reserved never reach a stream)."""

    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # we sent END_STREAM
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer sent END_STREAM
    CLOSED = "closed"  # both sides ended cleanly
    RESET = "reset"  # RST_STREAM, or a failed connection, before the peer's END_STREAM


_SENDING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})
_RECEIVING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
_DONE = frozenset({StreamState.CLOSED, StreamState.RESET})


class StreamOwner(Protocol):
    """What a stream needs of its connection; implemented by the connection."""

    @property
    def peer(self) -> SpiffeId | None: ...  # verified by mTLS; None without it
    @property
    def peer_address(self) -> tuple[str, int] | None: ...
    def send_capacity(self, stream: H2Stream) -> int: ...
    def queue_data(self, stream: H2Stream, chunk: memoryview) -> None: ...
    def want_space(self, stream: H2Stream, waiting: bool) -> None: ...
    def credit(self, stream: H2Stream, n: int) -> None: ...
    def send_headers(self, stream: H2Stream, headers: Headers, *, end_stream: bool) -> None: ...
    def end_stream(self, stream: H2Stream) -> None: ...
    def reset_stream(self, stream: H2Stream, code: int) -> None: ...
    def close_stream(self, stream: H2Stream) -> None: ...


@dataclass(frozen=True)
class StreamStatistics:
    state: StreamState
    buffered: int  # received, not yet read
    send_window: int  # what we may still send before the peer's WINDOW_UPDATE
    receive_window: WindowStatistics
    delivered: int  # bytes send_to put into its socket


class H2Stream(trio.abc.HalfCloseableStream):
    """One HTTP/2 stream. Created by the connection (``open_stream``/``start_request``
    on the client side, handed to the handler on the server side)."""

    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        send_window: int,
        recv_window: int,
        request_headers: Headers | None = None,
    ) -> None:
        self.connection = owner
        self.stream_id = stream_id
        self.state = StreamState.OPEN
        self.send_window = send_window
        self.recv_window = ReceiveWindow(recv_window)
        self.request_headers: Headers = request_headers or []
        # content-length of what the peer sends, checked by the connection
        self.expected_length = _content_length(self.request_headers)
        self.content_received = 0
        self.response_headers: Headers = []
        self.trailers: Headers = []
        self.status: int | None = None
        self.headers_sent = False
        self.delivered = 0
        self.queued = 0  # bytes send_all has handed to the connection, in all
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already returned
        self._buffered = 0
        self._error: BaseException | None = None  # why the stream was reset, if it was
        self._closed = False  # aclose() was called: the Python object is done
        self._sending = False
        self._receiving = False
        # send_to: the socket DATA goes into, and whether its task holds unsent bytes.
        self._sink: trio.socket.SocketType | None = None
        self._sink_busy = False
        self._send_lot = trio.lowlevel.ParkingLot()
        self._recv_lot = trio.lowlevel.ParkingLot()

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(
            self.state,
            self._buffered,
            self.send_window,
            self.recv_window.statistics(),
            self.delivered,
        )

    # ---- called by the connection (sync) ---------------------------------------

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def broken(self) -> bool:
        """Reset, either way, or its connection failed."""
        return self._error is not None

    def is_done(self) -> bool:
        return self.state in _DONE

    def may_send(self) -> bool:
        return self.state in _SENDING and self._error is None

    def accepts_data(self) -> bool:
        return self.state in _RECEIVING

    def direct_sink(self) -> trio.socket.SocketType | None:
        """The socket the reader may write this stream's next DATA into, now."""
        if self._sink is None or self._sink_busy or self._buffered:
            return None  # keep the order: what waits goes first, through send_to
        return self._sink

    def on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._recv_lot.unpark_all()

    def on_headers(self, headers: Headers) -> None:
        """The response headers (client side); 1xx answers are not passed here."""
        self.response_headers = headers
        self.expected_length = _content_length(headers)
        status = dict(headers).get(":status", "0")
        self.status = int(status) if status.isdigit() else 0
        self._recv_lot.unpark_all()

    def on_trailers(self, headers: Headers) -> None:
        self.trailers = headers

    def on_remote_end(self) -> None:
        """The peer sent END_STREAM (idempotent)."""
        if self.state is StreamState.OPEN:
            self.state = StreamState.HALF_CLOSED_REMOTE
        elif self.state is StreamState.HALF_CLOSED_LOCAL:
            self.state = StreamState.CLOSED
        self._recv_lot.unpark_all()

    def on_local_end(self) -> None:
        """We sent END_STREAM."""
        if self.state is StreamState.OPEN:
            self.state = StreamState.HALF_CLOSED_LOCAL
        elif self.state is StreamState.HALF_CLOSED_REMOTE:
            self.state = StreamState.CLOSED

    def on_reset(self, error: BaseException) -> None:
        """Reset either way, or the connection failed: ``error`` says why."""
        if self._error is None and self.state is not StreamState.CLOSED:
            self._error = error
            # What the peer finished sending stays readable to its end; otherwise
            # the receiving side is broken too.
            ended = self.state is StreamState.HALF_CLOSED_REMOTE
            self.state = StreamState.CLOSED if ended else StreamState.RESET
        self.wake()

    def window_opened(self) -> None:
        self._send_lot.unpark_all()

    def wake(self) -> None:
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()

    def discard_buffer(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._buffered = 0

    # ---- errors -----------------------------------------------------------------

    def _broken(self) -> trio.BrokenResourceError:
        err = trio.BrokenResourceError(f"HTTP/2 stream failed: {self._error}")
        err.__cause__ = self._error
        return err

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("HTTP/2 stream was closed")
        if self._error is not None:
            raise self._broken()
        if self.state not in _SENDING:
            raise trio.ClosedResourceError("can't send after send_eof")

    # ---- headers ------------------------------------------------------------------

    async def wait_response(self) -> Headers:
        """The response headers (client side), once they arrived."""
        while self.status is None:
            if self._error is not None:
                raise self._error
            await self._recv_lot.park()
        return self.response_headers

    async def wait_connect_answer(self) -> None:
        """CONNECT: wait for the answer; anything but 200 is :class:`HboneStreamRefused`."""
        try:
            await self.wait_response()
        except StreamReset as exc:
            if exc.code == ErrorCodes.REFUSED_STREAM:  # RFC 9113 §8.7: never processed
                raise HboneRetryableError(f"the peer refused the stream: {exc}") from exc
            raise HboneStreamRefused(None, Reason.CONNECTION_RESET, str(self._broken())) from exc
        if self.status != 200:
            code = dict(self.response_headers).get(REASON_HEADER)
            raise HboneStreamRefused(self.status, Reason.from_code(code))

    def send_headers(self, headers: Sequence[tuple[str, str]], *, end_stream: bool = False) -> None:
        """Send request or response headers (once; :meth:`send_trailers` for the end)."""
        if self.headers_sent:
            raise RuntimeError("headers were already sent on this stream")
        self._check_send()
        self.headers_sent = True
        if end_stream:
            self.on_local_end()
        self.connection.send_headers(self, list(headers), end_stream=end_stream)

    def reject_nowait(self, reason: Reason) -> None:
        """Answer with the reason's status and its code in an ``ambit-reason`` header (only
        the code: details stay in our log), end our side, and cancel the peer's side if it
        is still sending."""
        status = str(reason.status)
        self.send_headers([(":status", status), (REASON_HEADER, reason.value)], end_stream=True)
        if self.state is StreamState.HALF_CLOSED_LOCAL:
            self.connection.reset_stream(self, ErrorCodes.NO_ERROR)

    async def send_trailers(self, headers: Sequence[tuple[str, str]]) -> None:
        """End our side with a trailing HEADERS frame instead of an empty DATA frame."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HTTP/2 stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_send()
        self.on_local_end()
        self.connection.send_headers(self, list(headers), end_stream=True)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # ---- trio.abc.SendStream ---------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HTTP/2 stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_send()
            view = _bytes_view(data)
            waited = False
            while view := view[self._queue_now(view) :]:
                await self._wait_space()
                waited = True
                self._check_send()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Queue what flow control and the connection's write buffer take now: the count.

        Never waits and, unlike :meth:`send_all`, is not a checkpoint: an HTTP/2 connection
        carried inside this stream (a waypoint's h2c) hands its frames over from its writer
        without an extra pass through the scheduler. Raises as :meth:`send_all` does on a
        closed or broken stream."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HTTP/2 stream")
        self._check_send()
        return self._queue_now(_bytes_view(data))

    def _queue_now(self, view: memoryview) -> int:
        """Hand the connection what its windows and write buffer take of ``view`` now."""
        owner = self.connection
        sent = 0
        while sent < len(view) and (allowed := owner.send_capacity(self)) > 0:
            n = min(allowed, len(view) - sent)
            owner.queue_data(self, view[sent : sent + n])
            sent += n
        self.queued += sent
        return sent

    async def _wait_space(self) -> None:
        self.connection.want_space(self, True)
        try:
            await self._send_lot.park()
        finally:
            self.connection.want_space(self, False)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HTTP/2 stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_send()
            if self.connection.send_capacity(self) > 0:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            while self.connection.send_capacity(self) <= 0:
                await self._wait_space()
                self._check_send()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this HTTP/2 stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("HTTP/2 stream was closed")
        if self._error is not None:
            raise self._broken()
        if self.state in _SENDING:
            self.on_local_end()
            self.connection.end_stream(self)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # ---- trio.abc.ReceiveStream ------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this HTTP/2 stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("HTTP/2 stream was closed")
                if self._buffered:
                    data = self._take(max_bytes) if max_bytes else self._take_chunk()
                    self.connection.credit(self, len(data))
                    break
                if self.state is StreamState.RESET:
                    raise self._broken()
                if self.state not in _RECEIVING:
                    data = b""
                    break
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
            raise trio.BusyResourceError("another task is receiving on this HTTP/2 stream")
        self._receiving = True
        self._sink = sock
        yielder = sockio.Yielder()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("HTTP/2 stream was closed")
                if self._buffered:
                    data = self._take_chunk()
                    # Credit as it is taken, as receive_some does: a send cancelled
                    # half-way (the app reset) must not keep the window it held.
                    self.connection.credit(self, len(data))
                    self._sink_busy = True
                    try:
                        await sockio.send_all(sock, data)
                    finally:
                        self._sink_busy = False
                    self.delivered += len(data)
                    await yielder.tick()
                    continue
                if self.state is StreamState.RESET:
                    raise self._broken()
                if self.state not in _RECEIVING:
                    return
                await self._recv_lot.park()
        finally:
            self._sink = None
            self._receiving = False

    def delivered_directly(self, n: int) -> None:
        """Called by the connection: it wrote ``n`` bytes straight into the sink."""
        self.delivered += n

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
            self.connection.close_stream(self)
            self.wake()
        await trio.lowlevel.checkpoint()


def _bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.itemsize == 1 and view.ndim == 1 else view.cast("B")


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name == "content-length":
            return int(value) if value.isascii() and value.isdigit() else None
    return None


class StreamReset(HboneError):
    """A stream was reset: by the peer or by us (``code``), see the message. An
    :class:`HboneError`, so that whoever handles those handles an answer that never came
    (``wait_response``) too."""

    def __init__(self, code: int, *, by_peer: bool) -> None:
        try:
            name = ErrorCodes(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"stream reset by {'peer' if by_peer else 'us'} ({name})")
        self.code = code
        self.by_peer = by_peer


HboneStream = H2Stream  # the name the relay and the pool use: a CONNECT tunnel
