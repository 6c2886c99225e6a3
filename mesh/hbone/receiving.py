"""How an HTTP/2 connection acts on the frames :mod:`mesh.hbone.protocol` parses: a header
block opens a stream (server side), answers one (client side) or ends it (trailers);
SETTINGS change windows and frame sizes; RST_STREAM resets a stream, within the rapid-reset
budget; malformed requests and frames on closed streams reset their stream only.

:class:`FrameHandling` is a part of :class:`~mesh.hbone.engine.Http2Engine`, kept in its own
module; it names what it uses of the engine below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio
from h2.errors import ErrorCodes

from mesh.hbone import frames, protocol
from mesh.hbone.protocol import H2Protocol, HeaderBlock, HeaderListTooLarge, StreamError
from mesh.hbone.stream import H2Stream, Headers, StreamReset

if TYPE_CHECKING:
    from mesh.hbone.frames import FrameReader
    from mesh.hbone.goaway import Goaway
    from mesh.hbone.limits import ResetBudget
    from mesh.hbone.settings import HboneSettings
    from mesh.identity import SpiffeId

log = structlog.get_logger("mesh.hbone")


class FrameHandling:
    h2: H2Protocol
    reader: FrameReader
    streams: dict[int, H2Stream]
    settings: HboneSettings
    goaway: Goaway
    client_side: bool
    _peer: SpiffeId | None
    _resets: ResetBudget
    _peer_initial_window: int
    _peer_max_frame: int

    if TYPE_CHECKING:  # the engine's, used here

        def protocol_error(self, code: int, reason: str) -> None: ...
        def new_stream(self, sid: int, request_headers: Headers | None = None) -> H2Stream: ...
        def stream_received(self, stream: H2Stream) -> None: ...
        def reset_by_peer(self, stream: H2Stream) -> None: ...
        def ping_acked(self, data: bytes) -> None: ...
        def kick(self) -> None: ...
        def _is_ours(self, stream_id: int) -> bool: ...
        def _stream_broken(self, stream: H2Stream, code: int) -> None: ...
        def _forget_if_done(self, stream: H2Stream) -> None: ...
        def _detach(self, stream: H2Stream) -> None: ...

    def on_frame(self, header: frames.FrameHeader, body: int) -> None:
        """Every frame but DATA, WINDOW_UPDATE and GOAWAY."""
        kind, h2, buf = header.type, self.h2, self.reader.buf
        try:
            if kind == frames.HEADERS:
                if (block := h2.on_headers(header, buf, body)) is not None:
                    self._on_header_block(block)
            elif kind == frames.CONTINUATION:
                if (block := h2.on_continuation(header, buf, body)) is not None:
                    self._on_header_block(block)
            elif kind == frames.SETTINGS:
                if (changed := h2.on_settings(header, buf, body)) is not None:
                    self._on_settings(changed)
            elif kind == frames.PING:
                if (answer := h2.on_ping(header, buf, body)) is not None:
                    self.ping_acked(answer)
            elif kind == protocol.RST_STREAM:
                self._on_rst_stream(header.stream_id, h2.on_rst_stream(header, buf, body))
            elif kind == protocol.PRIORITY:
                h2.on_priority(header, buf, body)
            elif kind == frames.PUSH_PROMISE:
                raise frames.FrameError(ErrorCodes.PROTOCOL_ERROR, "PUSH_PROMISE (push is off)")
            # other frame types are ignored (RFC 9113 §5.5)
        except StreamError as exc:
            self._stream_error(exc)

    def _on_header_block(self, block: HeaderBlock) -> None:
        headers = self.h2.decode(block)  # always: HPACK's table must stay in step
        sid = block.stream_id
        stream = self.streams.get(sid)
        if stream is None:
            if self.client_side:  # the server opens no streams (no push)
                if self.h2.is_idle(sid) or not self._is_ours(sid):
                    self.protocol_error(ErrorCodes.PROTOCOL_ERROR, f"HEADERS on stream {sid}")
                return  # a stream we reset or closed: ignored
            if self.h2.reset_by_us(sid):
                return  # trailers of a request we refused, sent before the peer knew
            self.h2.accept_new_stream(sid)
            self._on_request(block, headers)
            return
        if block.error is not None:
            raise block.error
        if not stream.accepts_data():
            raise StreamError(sid, ErrorCodes.STREAM_CLOSED, "HEADERS after the end of the stream")
        if self.client_side and stream.status is None:
            self._on_response(stream, block, headers)
            return
        if not block.end_stream:  # trailers end the stream
            raise StreamError(sid, ErrorCodes.PROTOCOL_ERROR, "trailers without END_STREAM")
        try:
            protocol.check_trailers(headers)
        except ValueError as exc:
            raise StreamError(
                sid, ErrorCodes.PROTOCOL_ERROR, f"malformed trailers: {exc}"
            ) from None
        if stream.expected_length not in (None, stream.content_received):
            raise StreamError(sid, ErrorCodes.PROTOCOL_ERROR, "content-length and DATA disagree")
        stream.on_trailers(headers)
        stream.on_remote_end()
        self._forget_if_done(stream)

    def _on_request(self, block: HeaderBlock, headers: Headers) -> None:
        sid = block.stream_id
        if not self.goaway.accepts(sid):  # opened after our GOAWAY: not processed
            self._refuse(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.settings.max_concurrent_streams:
            self._refuse(sid, ErrorCodes.REFUSED_STREAM)
            return
        if isinstance(block.error, HeaderListTooLarge):  # RFC 9113 §10.5.1
            self.h2.send_headers(sid, [(":status", "431"), ("content-length", "0")], True)
            if not block.end_stream:  # the rest of the request is not wanted
                self.h2.send_rst_stream(sid, ErrorCodes.NO_ERROR)
            self.kick()
            log.info("h2_request_malformed", peer=str(self._peer), stream_id=sid, status=431,
                     reason=block.error.reason)  # fmt: skip
            return
        if block.error is not None:
            self._refuse(sid, block.error.code)
            return
        try:
            protocol.check_request(headers)
        except ValueError as exc:
            self._refuse(sid, ErrorCodes.PROTOCOL_ERROR)
            log.info("h2_request_malformed", peer=str(self._peer), stream_id=sid, reason=str(exc))
            return
        stream = self.new_stream(sid, headers)
        if block.end_stream:
            # Before anyone looks at the request: a handler must see that it ended.
            stream.on_remote_end()
        self.stream_received(stream)

    def _on_response(self, stream: H2Stream, block: HeaderBlock, headers: Headers) -> None:
        sid = stream.stream_id
        try:
            status = protocol.check_response(headers)
        except ValueError as exc:
            raise StreamError(
                sid, ErrorCodes.PROTOCOL_ERROR, f"malformed response: {exc}"
            ) from None
        if 100 <= status < 200:  # interim answers are not passed on
            if block.end_stream or status == 101:
                raise StreamError(sid, ErrorCodes.PROTOCOL_ERROR, f"bad interim answer {status}")
            return
        stream.on_headers(headers)
        if block.end_stream:
            stream.on_remote_end()
            self._forget_if_done(stream)

    def _refuse(self, sid: int, code: int) -> None:
        self.h2.send_rst_stream(sid, code)
        self.kick()

    def _stream_error(self, exc: StreamError) -> None:
        if (stream := self.streams.get(exc.stream_id)) is not None:
            self._stream_broken(stream, exc.code)
        else:
            self._refuse(exc.stream_id, exc.code)

    def _not_open(self, sid: int, kind: str) -> None:
        """A frame for a stream that is not open (to the peer): idle is a connection
        error, closed a stream error (RFC 9113 §5.1)."""
        if self.h2.is_idle(sid):
            self.protocol_error(ErrorCodes.PROTOCOL_ERROR, f"{kind} on idle stream {sid}")
        if sid in self.streams or not self.h2.reset_by_us(sid):
            self._stream_error(StreamError(sid, ErrorCodes.STREAM_CLOSED, f"{kind} after close"))

    def _on_rst_stream(self, sid: int, code: int) -> None:
        if not self._resets.take(trio.current_time()):
            self.protocol_error(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
        if (stream := self.streams.get(sid)) is not None:
            self._detach(stream)
            stream.on_reset(StreamReset(code, by_peer=True))
            self.reset_by_peer(stream)

    def _on_settings(self, changed: dict[int, int]) -> None:
        if protocol.INITIAL_WINDOW_SIZE in changed:
            window = self.h2.remote.initial_window_size
            delta = window - self._peer_initial_window
            self._peer_initial_window = window
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > frames.MAX_WINDOW:
                    self.protocol_error(
                        ErrorCodes.FLOW_CONTROL_ERROR, "a stream window over 2^31-1"
                    )
                stream.window_opened()
        if protocol.MAX_FRAME_SIZE in changed:
            self._peer_max_frame = self.h2.remote.max_frame_size
