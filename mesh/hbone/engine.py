"""The HTTP/2 protocol engine of a connection: frames, flow control, streams.

:class:`Http2Engine` is the core that :class:`~mesh.hbone.connection.Http2Connection`
runs with Trio tasks. It splits received bytes into frames itself
(:class:`~mesh.hbone.frames.FrameReader`), consumes DATA and WINDOW_UPDATE and owns
all flow control in both directions; header blocks, SETTINGS, PING, RST_STREAM and
stream-id rules are :class:`~mesh.hbone.protocol.H2Protocol`'s (sans-IO, ours: the h2
library did this before and cost 5-6 times HPACK's own work per header block). GOAWAY
is the engine's, both ways (:mod:`mesh.hbone.goaway`), so a graceful two-phase GOAWAY
lets the streams that are to finish, finish.

Invariants:
- The read path never awaits a send: it queues and wakes the writer
  (:class:`~mesh.hbone.writer.FrameWriter`), only when there is something
  to send.
- Flow-control credit is returned as the consumer takes data (``receive_some``,
  ``send_to``, or the reader writing DATA straight into a ``send_to`` socket),
  never when data is merely buffered, so every buffer is bounded by a window
  (:class:`~mesh.hbone.window.ReceiveWindow`).
- A connection error is remembered and fails every stream on it; a stream error
  (a malformed request, a frame on a closed stream) resets that stream alone.
- Streams know the engine only as a :class:`~mesh.hbone.stream.StreamOwner`.
"""

from __future__ import annotations

import contextlib

import structlog
import trio
from h2.errors import ErrorCodes

from mesh import sockio
from mesh.hbone import frames
from mesh.hbone.goaway import Goaway
from mesh.hbone.limits import ResetBudget
from mesh.hbone.protocol import H2Protocol
from mesh.hbone.protocol import Settings as ProtocolSettings
from mesh.hbone.receiving import FrameHandling
from mesh.hbone.settings import HboneConnectionError, HboneRetryableError, HboneSettings
from mesh.hbone.stream import H2Stream, Headers, StreamReset, StreamState
from mesh.hbone.transport import Transport
from mesh.hbone.window import ReceiveWindow, WindowOverflow
from mesh.hbone.writer import FrameWriter
from mesh.identity import SpiffeId
from mesh.reason import Reason

log = structlog.get_logger("mesh.hbone")
_ERROR_CODES = frozenset(int(code) for code in ErrorCodes)


class Http2Engine(FrameHandling):
    """One HTTP/2 connection's protocol state over ``transport``.

    The subclass runs :meth:`read_loop` and ``writer.run`` and decides what to
    do with new streams (:meth:`stream_received`) and PING answers.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        settings: HboneSettings,
        client_side: bool,
        peer: SpiffeId | None = None,
        peer_address: tuple[str, int] | None = None,
    ) -> None:
        self._peer = peer
        self._peer_address = peer_address
        self.settings = settings
        self.client_side = client_side
        self.transport = transport
        self.writer = FrameWriter(transport, limit=settings.write_buffer_limit)
        self.h2 = H2Protocol(
            client_side=client_side,
            local=ProtocolSettings(
                enable_push=0 if client_side else 1,
                max_concurrent_streams=settings.max_concurrent_streams,
                initial_window_size=settings.stream_window,
                max_frame_size=settings.max_frame_size,
                max_header_list_size=settings.max_header_list_size,
            ),
            out=self.writer.batch,
        )
        self.h2.initiate(settings.connection_window)

        self.streams: dict[int, H2Stream] = {}
        self.reader = frames.FrameReader(
            max_frame_size=settings.max_frame_size, expect_preface=not client_side
        )
        self._space_waiters: set[H2Stream] = set()
        # Flow control, ours alone.
        self.send_window = 65_535
        self.recv_window = ReceiveWindow(settings.connection_window)
        self._peer_initial_window = 65_535
        self._peer_max_frame = frames.MIN_FRAME_SIZE
        self.error: HboneConnectionError | None = None
        self.goaway = Goaway()
        self.idle_since = trio.current_time()
        self.bytes_received = 0
        self._resets = ResetBudget(settings.reset_burst, settings.reset_rate, self.idle_since)

    @property
    def peer(self) -> SpiffeId | None:
        """The identity mTLS verified (None without mTLS)."""
        return self._peer

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The TCP peer: the source pod's IP in the mesh."""
        return self._peer_address

    # ---- hooks for the subclass ---------------------------------------------------

    def stream_received(self, stream: H2Stream) -> None:
        """The peer opened ``stream``; its request headers are in it."""
        stream.reject_nowait(Reason.PROTOCOL_ERROR)  # this endpoint accepts no streams

    def reset_by_peer(self, stream: H2Stream) -> None:
        """The peer reset ``stream``, or broke the protocol on it (and we reset it): no one
        waits for its answer any more."""

    def ping_acked(self, data: bytes) -> None:
        """The peer answered our PING carrying ``data``."""

    def drained(self) -> None:
        """A GOAWAY was sent or received and no stream is left."""

    def failing(self) -> None:
        """The connection just failed (:attr:`error` says why)."""

    def fail(self, exc: HboneConnectionError) -> None:
        """Remember the connection's error and fail every stream on it (once)."""
        if self.error is not None:
            return
        self.error = exc
        self.failing()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.on_reset(exc)
        for stream in list(self._space_waiters):
            stream.wake()
        self.writer.wake()

    # ---- reading --------------------------------------------------------------

    async def read_loop(self) -> None:
        """Receive, split into frames, handle; raises at the end of the connection."""
        transport = self.transport
        reader = self.reader
        yielder = sockio.Yielder()
        while True:
            await yielder.tick()  # receive_into does not checkpoint while data keeps coming
            n = await transport.receive_into(reader.room())
            if n == 0:
                raise HboneConnectionError("peer closed the connection", code=ErrorCodes.NO_ERROR)
            self.bytes_received += n
            reader.received(n)
            try:
                reader.process(self)
            except frames.FrameError as exc:
                self.protocol_error(exc.code, exc.reason)
            self.writer.kick()  # e.g. acks of SETTINGS and PING; only if there are any

    # FrameSink: the reader hands us frames.

    def failed(self) -> bool:
        return self.error is not None

    def protocol_error(self, code: int, reason: str) -> None:
        self.send_goaway(self.h2.highest_inbound_stream_id, code)
        raise HboneConnectionError(f"peer broke HTTP/2: {reason}", code=code)

    def send_goaway(self, last_stream_id: int, code: int = ErrorCodes.NO_ERROR) -> None:
        """Queue our GOAWAY (the streams at or below ``last_stream_id`` go on)."""
        if self.error is None:
            self.writer.queue(frames.goaway(self.goaway.sending(last_stream_id), code))

    def on_goaway(self, header: frames.FrameHeader, body: int) -> None:
        if header.stream_id != 0:
            self.protocol_error(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
        if header.length < 8:
            self.protocol_error(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code, _debug = frames.parse_goaway(self.reader.buf, body, header.length)
        self.goaway.received(last, code)
        for sid, stream in list(self.streams.items()):
            if self._is_ours(sid) and not self.goaway.processed_by_peer(sid):
                self._detach(stream)
                stream.on_reset(
                    HboneRetryableError(
                        f"the peer's GOAWAY (last stream {last}) says it never processed"
                        f" stream {sid}; retry on another connection"
                    )
                )
        if code != ErrorCodes.NO_ERROR:
            name = ErrorCodes(code).name if code in _ERROR_CODES else str(code)
            self.send_goaway(self.h2.highest_inbound_stream_id)  # ours before closing (§6.8)
            raise HboneConnectionError(f"peer sent GOAWAY with error {name}", code=code)
        if not self.streams:
            self.drained()

    def _is_ours(self, stream_id: int) -> bool:
        return not self.h2.opened_by_peer(stream_id)

    def on_data(self, header: frames.FrameHeader, body: int) -> None:
        sid = header.stream_id
        length = header.length
        if sid == 0:
            self.protocol_error(ErrorCodes.PROTOCOL_ERROR, "DATA frame on stream 0")
        try:
            self.recv_window.received(length)
        except WindowOverflow:
            self.protocol_error(
                ErrorCodes.FLOW_CONTROL_ERROR, "peer sent more DATA than the connection window"
            )
        stream = self.streams.get(sid)
        if stream is None or not stream.accepts_data():
            # Unknown, closed or reset stream: give the connection credit back now.
            self._credit_connection(length)
            self._not_open(sid, "DATA")
            return
        try:
            start, stop = frames.data_payload_bounds(header, self.reader.buf, body)
        except frames.PaddingError as exc:
            self.protocol_error(ErrorCodes.PROTOCOL_ERROR, str(exc))
        try:
            stream.recv_window.received(length)
        except WindowOverflow:
            self._credit_connection(length)
            self._stream_broken(stream, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        padding = length - (stop - start)
        if padding:
            self.credit(stream, padding)
        if stream.expected_length is not None and not self._count_content(stream, stop - start):
            self._credit_connection(stop - start)
            return
        if stop > start:
            sent = 0
            if (sink := stream.direct_sink()) is not None:
                # Straight from the receive buffer: no copy, no task switch. A failed
                # write is left for send_to to meet when it sends what is left.
                with contextlib.suppress(OSError):
                    sent = sockio.send_nowait(sink, self.reader.view[start:stop])
                if sent:
                    stream.delivered_directly(sent)
                    self.credit(stream, sent)
            if sent < stop - start:
                stream.on_data(bytes(self.reader.view[start + sent : stop]))  # one copy
        if header.flags & frames.FLAG_END_STREAM:
            if stream.expected_length not in (None, stream.content_received):
                self._stream_broken(stream, ErrorCodes.PROTOCOL_ERROR)  # content-length lied
                return
            stream.on_remote_end()
            self._forget_if_done(stream)

    def _count_content(self, stream: H2Stream, n: int) -> bool:
        """Count DATA against the stream's content-length (RFC 9113 §8.1.1); False if over."""
        stream.content_received += n
        if stream.content_received > (stream.expected_length or 0):
            self._stream_broken(stream, ErrorCodes.PROTOCOL_ERROR)
            return False
        return True

    def on_window_update(self, header: frames.FrameHeader, body: int) -> None:
        if header.length != 4:
            self.protocol_error(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE frame not 4 bytes long")
        increment = frames.window_increment(self.reader.buf, body)
        sid = header.stream_id
        if sid == 0:
            if increment == 0:
                self.protocol_error(
                    ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection"
                )
            self.send_window += increment
            if self.send_window > frames.MAX_WINDOW:
                self.protocol_error(ErrorCodes.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            for waiter in list(self._space_waiters):
                waiter.window_opened()
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self.h2.is_idle(sid):
                self.protocol_error(
                    ErrorCodes.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}"
                )
            return  # a closed stream: what the peer sent before it knew is ignored
        if increment == 0:
            self._stream_broken(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > frames.MAX_WINDOW:
            self._stream_broken(stream, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        stream.window_opened()

    def new_stream(self, sid: int, request_headers: Headers | None = None) -> H2Stream:
        stream = H2Stream(
            self, sid, self._peer_initial_window, self.settings.stream_window, request_headers
        )
        self.streams[sid] = stream
        return stream

    # ---- writing --------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self.writer.queue(data)

    def kick(self) -> None:
        self.writer.wake()

    def wake_space_waiters(self) -> None:
        for waiter in list(self._space_waiters):
            waiter.window_opened()

    # StreamOwner: what streams ask of their connection.

    def send_capacity(self, stream: H2Stream) -> int:
        """How many bytes ``stream`` may queue right now (0: wait)."""
        if self.writer.full():
            return 0
        return max(0, min(stream.send_window, self.send_window, self._peer_max_frame))

    def want_space(self, stream: H2Stream, waiting: bool) -> None:
        if waiting:
            self._space_waiters.add(stream)
        else:
            self._space_waiters.discard(stream)

    def queue_data(self, stream: H2Stream, chunk: memoryview) -> None:
        n = len(chunk)
        stream.send_window -= n
        self.send_window -= n
        self.writer.queue_data(stream.stream_id, chunk)

    def send_headers(self, stream: H2Stream, headers: Headers, *, end_stream: bool) -> None:
        if self.error is not None:
            raise trio.BrokenResourceError(f"HTTP/2 connection failed: {self.error.reason}")
        sid = stream.stream_id
        if self.client_side and sid >= self.h2.get_next_available_stream_id():  # a new stream
            limit = self.h2.remote.max_concurrent_streams
            if len(self.streams) > limit or sid > frames.MAX_STREAM_ID:
                self._detach(stream)  # never opened: no entry may keep the connection busy
                raise HboneRetryableError(
                    f"the peer allows {limit} streams at once (or ids ran out);"
                    " open the stream on another connection"
                )
        self.h2.send_headers(sid, headers, end_stream)
        if end_stream:
            self._forget_if_done(stream)
        self.kick()

    def end_stream(self, stream: H2Stream) -> None:
        self.h2.send_end_stream(stream.stream_id)
        self._forget_if_done(stream)
        self.kick()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        self._reset_stream(stream, code)

    def _reset_stream(self, stream: H2Stream, code: int) -> None:
        self._detach(stream)
        if stream.state is not StreamState.CLOSED:
            self.h2.send_rst_stream(stream.stream_id, code)
        stream.on_reset(StreamReset(code, by_peer=False))
        self.kick()

    def _stream_broken(self, stream: H2Stream, code: int) -> None:
        """The peer broke the protocol on ``stream`` (a stream error): reset it, and tell
        whoever serves it, as for a reset by the peer."""
        self._reset_stream(stream, code)
        self.reset_by_peer(stream)

    def close_stream(self, stream: H2Stream) -> None:
        """The user closed the stream: finish our side, cancel theirs if still open."""
        if self.streams.get(stream.stream_id) is stream and self.error is None:
            if stream.may_send():  # END_STREAM first: what we sent is complete
                stream.on_local_end()
                self.h2.send_end_stream(stream.stream_id)
            if stream.accepts_data():  # the peer still sends: cancel that
                self._reset_stream(stream, ErrorCodes.CANCEL)
            self.kick()
        self._detach(stream)
        stream.discard_buffer()
        self._space_waiters.discard(stream)

    def _forget_if_done(self, stream: H2Stream) -> None:
        if stream.is_done():
            self._detach(stream)

    def _detach(self, stream: H2Stream) -> None:
        """Take a finished stream out of the table and give the connection window
        back the bytes still buffered in it; they stay readable, but reading them
        no longer returns credit."""
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self._credit_connection(stream.buffered)
        if not self.streams:
            self.idle_since = trio.current_time()
            if self.goaway.draining():
                self.drained()

    def credit(self, stream: H2Stream, n: int) -> None:
        """``n`` bytes of ``stream`` were consumed: return flow-control credit."""
        if n <= 0 or self.error is not None:
            return
        if self.streams.get(stream.stream_id) is not stream:
            return  # detached: its buffered bytes were already given back
        if stream.accepts_data() and (increment := stream.recv_window.consumed(n)):
            self._queue(frames.window_update(stream.stream_id, increment))
        self._credit_connection(n)

    def _credit_connection(self, n: int) -> None:
        if n > 0 and self.error is None and (increment := self.recv_window.consumed(n)):
            self._queue(frames.window_update(0, increment))


def _closed() -> HboneConnectionError:
    return HboneConnectionError("connection closed", code=ErrorCodes.NO_ERROR)
