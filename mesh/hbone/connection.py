"""One HBONE connection: HTTP/2 over our TLS stream, carrying CONNECT streams.

The boundary with h2 (tested in tests/integration/test_hbone_protocol.py):
h2 parses and writes HEADERS/CONTINUATION, SETTINGS, RST_STREAM, PING and
GOAWAY and keeps the stream state machine. The tunnel splits received bytes
into frames itself, consumes DATA and WINDOW_UPDATE, and owns all flow
control in both directions. h2 only ever sees *empty* DATA frames in place of
the ones consumed, so it still learns END_STREAM and judges frames for closed
or unknown streams; its own windows are never used.

Invariants:
- Bytes leave through one writer task, in the order they were queued; h2's
  output is moved into the write buffer before any frame of ours is appended.
  The writer runs once per scheduler batch, so the requests of many streams
  that woke together leave in one TLS write.
- The read path never awaits a send: it queues and wakes the writer, and only
  when there is something to send.
- Flow-control credit is returned as the consumer takes data (``receive_some``,
  ``send_to``, or the reader writing DATA straight into a ``send_to`` socket),
  never when data is merely buffered, so every buffer is bounded by a window.
- A connection error is remembered and fails every stream on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio
from h2.errors import ErrorCodes

from mesh import sockio
from mesh.hbone import frames
from mesh.hbone.settings import (
    HboneConnectionError,
    HboneSettings,
)
from mesh.hbone.stream import HboneRequest, HboneStream
from mesh.identity import SpiffeId
from mesh.reason import Reason
from mesh.tls import TlsError, TlsStream

log = structlog.get_logger("mesh.hbone")

DIRECT_ENCRYPT_MIN = 16 * 1024  # payloads this large skip the batching copy


RequestHandler = Callable[[HboneRequest], Awaitable[None]]


class HboneConnection:
    """An HTTP/2 connection over an established, verified :class:`TlsStream`.

    Run :meth:`serve` in a nursery; it returns when the connection has ended
    and every handler it started has finished. Client side: :meth:`open_stream`.
    Server side: each CONNECT is handed to ``handler`` in its own task.
    """

    def __init__(
        self,
        tls: TlsStream,
        *,
        peer: SpiffeId,
        settings: HboneSettings,
        handler: RequestHandler | None = None,
        idle_timeout: float | None = None,
        peer_address: tuple[str, int] | None = None,
    ) -> None:
        self.peer = peer
        self.peer_address = peer_address  # the TCP peer: the source pod's IP in the mesh
        self.settings = settings
        self.client_side = not tls.server_side
        self._tls = tls
        self._handler = handler
        self._idle_timeout = idle_timeout
        config = h2.config.H2Configuration(client_side=self.client_side, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        local: dict[h2.settings.SettingCodes, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
        }
        if self.client_side:
            local[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        # Set before initiate_connection so they travel in the first SETTINGS, after the preface.
        self.h2.local_settings = h2.settings.Settings(client=self.client_side, initial_values=local)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(settings.connection_window - 65_535)

        self._streams: dict[int, HboneStream] = {}
        self.reserved = 0  # client streams promised by the pool, not yet opened
        self._reader = frames.FrameReader(
            max_frame_size=settings.max_frame_size, expect_preface=not self.client_side
        )
        # Small frames (control, headers, short DATA) batched before encryption;
        # large DATA payloads are encrypted straight from the sender's buffer.
        self._small = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._space_waiters: set[HboneStream] = set()
        # Flow control, ours alone.
        self._send_window = 65_535
        self._recv_window = settings.connection_window
        self._recv_unacked = 0
        self._peer_initial_window = 65_535
        self._peer_max_frame = frames.MIN_FRAME_SIZE
        self.error: HboneConnectionError | None = None
        self.goaway_received = False
        self._io_scope: trio.CancelScope | None = None
        self._handlers: trio.Nursery | None = None
        self._ping_ack: trio.Event | None = None
        self.idle_since = trio.current_time()
        self.bytes_received = 0

    # ---- questions a pool asks ------------------------------------------------

    @property
    def stream_limit(self) -> int:
        peer_limit = self.h2.remote_settings.max_concurrent_streams
        return min(self.settings.max_concurrent_streams, peer_limit)

    def is_available(self) -> bool:
        """May another stream be opened on this connection right now?"""
        return (
            self.error is None
            and not self.goaway_received
            and len(self._streams) + self.reserved < self.stream_limit
        )

    def is_closed(self) -> bool:
        return self.error is not None

    def is_idle(self) -> bool:
        return not self._streams and not self.reserved

    # ---- running --------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the connection ends; every handler task finishes before this returns."""
        try:
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                with trio.CancelScope() as io_scope:
                    self._io_scope = io_scope
                    if self.error is None:
                        async with trio.open_nursery() as io:
                            io.start_soon(self._run_guarded, self._read_loop)
                            io.start_soon(self._run_guarded, self._write_loop)
                            io.start_soon(self._run_guarded, self._keepalive_loop)
                            if self._idle_timeout is not None:
                                io.start_soon(self._run_guarded, self._idle_loop)
                self._fail(self.error or _closed())
        finally:
            self._fail(_closed())
            await self._close_transport()

    def close(self, reason: str = "closed by owner") -> None:
        """Say GOAWAY and end the connection; :meth:`serve` returns soon after."""
        if self.error is None:
            self.h2.close_connection()
        self._fail(HboneConnectionError(reason, code=ErrorCodes.NO_ERROR))

    async def _run_guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except (TlsError, HboneConnectionError) as exc:
            self._fail(
                exc if isinstance(exc, HboneConnectionError) else HboneConnectionError(str(exc))
            )

    async def _close_transport(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                self._encrypt_small()  # e.g. GOAWAY after a protocol error
                await self._tls.flush()
            except (TlsError, OSError):
                pass
            await self._tls.aclose()

    def _fail(self, exc: HboneConnectionError) -> None:
        if self.error is not None:
            return
        self.error = exc
        if self._io_scope is not None:
            self._io_scope.cancel()
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._wake_all()
        for stream in list(self._space_waiters):
            stream._wake_all()
        self._writer_lot.unpark_all()

    # ---- reading --------------------------------------------------------------

    async def _read_loop(self) -> None:
        tls = self._tls
        reader = self._reader
        yielder = sockio.Yielder()
        while True:
            await yielder.tick()  # receive_into does not checkpoint while data keeps coming
            n = await tls.receive_into(reader.room())
            if n == 0:
                raise HboneConnectionError("peer closed the connection", code=ErrorCodes.NO_ERROR)
            self.bytes_received += n
            reader.received(n)
            try:
                reader.process(self)
            except frames.FrameError as exc:
                self._protocol_error(exc.code, exc.reason)
            if pending := self.h2.data_to_send():  # e.g. acks of SETTINGS and PING
                self._small += pending
            if self._small:  # only then is there anything for the writer to do
                self._writer_lot.unpark_all()

    # FrameSink: the reader hands us frames.

    def failed(self) -> bool:
        return self.error is not None

    def on_h2_bytes(self, data: bytes) -> None:
        self._h2_feed(data)

    def _protocol_error(self, code: int, reason: str) -> None:
        self.h2.close_connection(error_code=code)
        raise HboneConnectionError(f"peer broke HTTP/2: {reason}", code=code)

    def _h2_feed(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
            raise HboneConnectionError(f"peer broke HTTP/2: {exc}", code=code) from exc
        for event in events:
            self._on_event(event)

    def on_data(self, header: frames.FrameHeader, body: int) -> None:
        sid = header.stream_id
        length = header.length
        if sid == 0:
            self._protocol_error(ErrorCodes.PROTOCOL_ERROR, "DATA frame on stream 0")
        self._recv_window -= length
        if self._recv_window < 0:
            self._protocol_error(
                ErrorCodes.FLOW_CONTROL_ERROR, "peer sent more DATA than the connection window"
            )
        stream = self._streams.get(sid)
        if stream is None or not stream._accepts_data():
            # Unknown, closed or reset stream: give the connection credit back now and let
            # h2 decide whether this is a stream or a connection error.
            self._credit(None, length)
            self._h2_feed(frames.empty_data_frame(sid, header.flags))
            return
        try:
            start, stop = frames.data_payload_bounds(header, self._reader.buf, body)
        except frames.PaddingError as exc:
            self._protocol_error(ErrorCodes.PROTOCOL_ERROR, str(exc))
        stream._recv_window -= length
        if stream._recv_window < 0:
            self._credit(None, length)
            self._reset_stream(stream, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        padding = length - (stop - start)
        if padding:
            self._credit(stream, padding)
        if stop > start:
            sent = 0
            if (sink := stream._direct_sink()) is not None:
                # Straight from the receive buffer: no copy, no task switch. A failed
                # write is left for send_to to meet when it sends what is left.
                with contextlib.suppress(OSError):
                    sent = sockio.send_nowait(sink, self._reader.view[start:stop])
                if sent:
                    stream.delivered += sent
                    self._credit(stream, sent)
            if sent < stop - start:
                stream._on_data(bytes(self._reader.view[start + sent : stop]))  # one copy
        if header.flags & frames.FLAG_END_STREAM:
            self._h2_feed(frames.empty_data_frame(sid, frames.FLAG_END_STREAM))

    def on_window_update(self, header: frames.FrameHeader, body: int) -> None:
        if header.length != 4:
            self._protocol_error(
                ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE frame not 4 bytes long"
            )
        increment = frames.window_increment(self._reader.buf, body)
        sid = header.stream_id
        if sid == 0:
            if increment == 0:
                self._protocol_error(
                    ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection"
                )
            self._send_window += increment
            if self._send_window > frames.MAX_WINDOW:
                self._protocol_error(
                    ErrorCodes.FLOW_CONTROL_ERROR, "connection window above 2^31-1"
                )
            for waiter in list(self._space_waiters):
                waiter._send_lot.unpark_all()
            return
        stream = self._streams.get(sid)
        if stream is None:
            self._h2_feed(bytes(self._reader.view[body - frames.FRAME_HEADER_LEN : body + 4]))
            return
        if increment == 0:
            self._reset_stream(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        stream._send_window += increment
        if stream._send_window > frames.MAX_WINDOW:
            self._reset_stream(stream, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        stream._send_lot.unpark_all()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.ResponseReceived):
            if (stream := self._streams.get(event.stream_id or 0)) is not None:
                stream._on_response(_decoded(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            if (stream := self._streams.get(event.stream_id or 0)) is not None:
                stream._remote_eof = True
                self._forget_if_done(stream)
                stream._recv_lot.unpark_all()
        elif isinstance(event, h2.events.StreamReset):
            if (stream := self._streams.get(event.stream_id or 0)) is not None:
                self._detach(stream)
                stream._on_reset(int(event.error_code or 0), by_peer=True)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._on_settings(event)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)
        elif isinstance(event, h2.events.PingAckReceived) and self._ping_ack is not None:
            self._ping_ack.set()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        if (window := changed.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)) is not None:
            delta = int(window.new_value or 0) - int(window.original_value or 0)
            self._peer_initial_window = int(window.new_value or 0)
            for stream in self._streams.values():
                stream._send_window += delta
                stream._send_lot.unpark_all()
        if (size := changed.get(h2.settings.SettingCodes.MAX_FRAME_SIZE)) is not None:
            self._peer_max_frame = int(size.new_value or frames.MIN_FRAME_SIZE)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway_received = True
        code = int(event.error_code or 0)
        if code != ErrorCodes.NO_ERROR:
            raise HboneConnectionError(
                f"peer sent GOAWAY with error {ErrorCodes(code).name}", code=code
            )
        last = event.last_stream_id or 0
        for sid, stream in list(self._streams.items()):
            if self.client_side and sid > last:
                self._detach(stream)
                stream._on_reset(ErrorCodes.REFUSED_STREAM, by_peer=True)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id or 0
        headers = _decoded(event.headers)
        stream = HboneStream(self, sid, self._peer_initial_window, self.settings.stream_window)
        self._streams[sid] = stream
        request = HboneRequest(self, stream, headers)
        if self._handler is None or self._handlers is None:
            request.reject_nowait(Reason.PROTOCOL_ERROR)  # a client side accepts no CONNECT
            return
        problem = request.problem()
        if problem is not None:
            log.warning("hbone_bad_request", peer=str(self.peer), reason=problem)
            request.reject_nowait(Reason.BAD_REQUEST)
            return
        self._handlers.start_soon(self._run_handler, request)

    async def _run_handler(self, request: HboneRequest) -> None:
        assert self._handler is not None
        try:
            await self._handler(request)
        except Exception:
            log.exception("hbone_handler_failed", peer=str(self.peer), dst=request.authority)
            if not request.answered:
                request.reject_nowait(Reason.INTERNAL_ERROR)
        finally:
            if not request.answered:
                request.reject_nowait(Reason.INTERNAL_ERROR)
            with trio.CancelScope(shield=True):
                await request.stream.aclose()

    # ---- writing --------------------------------------------------------------

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        """Append our own frame bytes after whatever h2 has produced so far."""
        small = self._small
        pending = self.h2.data_to_send()
        if pending:
            small += pending
        small += data
        self._writer_lot.unpark_all()

    def _kick(self) -> None:
        self._writer_lot.unpark_all()

    def _encrypt_small(self) -> None:
        """Encrypt the batched small frames (and h2's output), keeping their order."""
        pending = self.h2.data_to_send()
        if pending:
            self._small += pending
        if self._small:
            self._tls.write(self._small)
            self._small.clear()

    async def _write_loop(self) -> None:
        """The only task that sends: flush what senders encrypted, batch by batch.

        Senders may encrypt the next batch while this one is on the wire;
        ``write_buffer_limit`` bounds what waits in OpenSSL's buffer."""
        tls = self._tls
        yielder = sockio.Yielder()
        while True:
            await yielder.tick()  # flush_batch does not checkpoint while the socket takes it all
            self._encrypt_small()
            if not tls.has_output():
                await self._writer_lot.park()
                continue
            if self._space_waiters:
                # They run once flush_batch yields, after it took the pending ciphertext.
                for waiter in list(self._space_waiters):
                    waiter._send_lot.unpark_all()
            await tls.flush_batch()

    def _send_capacity(self, stream: HboneStream) -> int:
        """How many bytes ``stream`` may queue right now (0: wait)."""
        if self._tls.pending_output() + len(self._small) >= self.settings.write_buffer_limit:
            return 0
        return max(0, min(stream._send_window, self._send_window, self._peer_max_frame))

    def _queue_data(self, stream: HboneStream, chunk: memoryview) -> None:
        n = len(chunk)
        stream._send_window -= n
        self._send_window -= n
        self._queue(frames.data_header(n, stream.stream_id))
        if n < DIRECT_ENCRYPT_MIN:
            self._small += chunk
        else:
            self._encrypt_small()  # everything queued before goes first
            self._tls.write(chunk)

    def _end_stream(self, stream: HboneStream) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.end_stream(stream.stream_id)
        self._forget_if_done(stream)
        self._kick()

    def _reset_stream(self, stream: HboneStream, code: int) -> None:
        self._detach(stream)
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(stream.stream_id, error_code=code)
        stream._on_reset(code, by_peer=False)
        self._kick()

    def _close_stream(self, stream: HboneStream) -> None:
        """The user closed the stream: finish our side, cancel theirs if still open."""
        if self._streams.get(stream.stream_id) is stream and self.error is None:
            if not stream._local_eof:
                stream._local_eof = True
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.end_stream(stream.stream_id)
            if not stream._remote_eof:
                self._reset_stream(stream, ErrorCodes.CANCEL)
            self._kick()
        self._detach(stream)
        stream._discard_buffer()
        self._space_waiters.discard(stream)

    def _forget_if_done(self, stream: HboneStream) -> None:
        if stream._local_eof and stream._remote_eof:
            self._detach(stream)

    def _detach(self, stream: HboneStream) -> None:
        """Take a finished stream out of the table and give the connection window
        back the bytes still buffered in it; they stay readable, but reading them
        no longer returns credit."""
        if stream._detached:
            return
        stream._detached = True
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            if not self._streams:
                self.idle_since = trio.current_time()
        stream._unacked = 0  # consumed bytes were already counted for the connection
        self._credit(None, stream._buffered)

    def _credit(self, stream: HboneStream | None, n: int) -> None:
        """``n`` bytes were consumed: return flow-control credit past half a window."""
        if n <= 0 or self.error is not None:
            return
        if stream is not None:
            if stream._detached:
                return
            if not stream._accepts_data():
                self._credit(None, n)
                return
            stream._unacked += n
            if stream._unacked >= self.settings.stream_window // 2:
                stream._recv_window += stream._unacked
                self._queue(frames.window_update(stream.stream_id, stream._unacked))
                stream._unacked = 0
        self._recv_unacked += n
        if self._recv_unacked >= self.settings.connection_window // 2:
            self._recv_window += self._recv_unacked
            self._queue(frames.window_update(0, self._recv_unacked))
            self._recv_unacked = 0

    # ---- client side ----------------------------------------------------------

    async def open_stream(
        self, authority: str, headers: Sequence[tuple[str, str]] = ()
    ) -> HboneStream:
        """Send ``CONNECT authority`` and return the stream once the peer answers 200."""
        if self.error is not None:
            raise self.error
        sid = self.h2.get_next_available_stream_id()
        stream = HboneStream(self, sid, self._peer_initial_window, self.settings.stream_window)
        self._streams[sid] = stream
        self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority), *headers])
        self._kick()
        try:
            await stream._wait_response()
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return stream

    # ---- keepalive and idleness -----------------------------------------------

    async def _keepalive_loop(self) -> None:
        settings = self.settings
        while True:
            await trio.sleep(settings.ping_interval)
            self._ping_ack = trio.Event()
            self.h2.ping(b"ambitpng")
            self._kick()
            with trio.move_on_after(settings.ping_timeout):
                await self._ping_ack.wait()
                continue
            raise HboneConnectionError(
                f"peer did not answer a PING within {settings.ping_timeout:g}s; "
                "it is gone or stalled (is the network between the nodes partitioned?)"
            )

    async def _idle_loop(self) -> None:
        assert self._idle_timeout is not None
        while True:
            idle_for = trio.current_time() - self.idle_since
            if self.is_idle() and idle_for >= self._idle_timeout:
                self.close("idle")
                return
            await trio.sleep(max(self._idle_timeout - idle_for, self._idle_timeout / 10))


def _closed() -> HboneConnectionError:
    return HboneConnectionError("connection closed", code=ErrorCodes.NO_ERROR)


def _decoded(headers: object) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in headers:  # type: ignore[attr-defined]
        out.append(
            (
                name.decode() if isinstance(name, bytes) else name,
                value.decode() if isinstance(value, bytes) else value,
            )
        )
    return out
