"""The HTTP/2 frames, and the splitting of received bytes into frames (sans-IO: no sockets
here).

The reader splits the received byte stream into frames in place and hands each to the
connection: DATA, WINDOW_UPDATE and GOAWAY to their own handlers, every other frame to
``on_frame`` (:mod:`mesh.hbone.protocol` keeps their rules). DATA payloads are never
copied on the way.

The reader also refuses floods with ENHANCE_YOUR_CALM: a header block (HEADERS and
CONTINUATIONs) over :data:`MAX_HEADER_BLOCK` bytes, each frame's 9-byte header counted
(so empty CONTINUATIONs cannot pile up without end), and frames that make us work for
nothing beyond :data:`CONTROL_BURST`, refilled at :data:`CONTROL_RATE` per second: PING
and SETTINGS to answer, PRIORITY (ignored, but parsed), and empty DATA frames that do not
end their stream (CVE-2019-9518). Rapid reset is :class:`~mesh.hbone.limits.ResetBudget`'s,
in the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from mesh.hbone.limits import ResetBudget

FRAME_HEADER_LEN: Final = 9
CONNECTION_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
PUSH_PROMISE: Final = 0x5
SETTINGS: Final = 0x4
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

FLAG_END_STREAM: Final = 0x1
FLAG_ACK: Final = 0x1  # on SETTINGS and PING
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8

MAX_WINDOW: Final = 2**31 - 1
MAX_STREAM_ID: Final = 2**31 - 1
MIN_FRAME_SIZE: Final = 16_384
MAX_FRAME_SIZE: Final = 2**24 - 1
ENHANCE_YOUR_CALM: Final = 0xB

# Flood defences (a peer that makes us work for nothing gets GOAWAY ENHANCE_YOUR_CALM):
# a header block (HEADERS and its CONTINUATIONs, frame headers included) over this many
# bytes (CVE-2024-27316),
MAX_HEADER_BLOCK: Final = 256 * 1024
# and PING or SETTINGS frames we must answer, PRIORITY frames and empty DATA frames that
# do not end a stream, beyond a burst, faster than this per second.
CONTROL_BURST: Final = 1000
CONTROL_RATE: Final = 100.0


class FrameHeader(NamedTuple):
    length: int
    type: int
    flags: int
    stream_id: int


def parse_header(buf: bytes | bytearray | memoryview, pos: int) -> FrameHeader:
    """The 9-byte frame header at ``buf[pos:]`` (the caller checked there are 9 bytes)."""
    length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
    stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
    return FrameHeader(length, buf[pos + 3], buf[pos + 4], stream_id)


def frame_header(length: int, type_: int, flags: int, stream_id: int) -> bytes:
    return (
        length.to_bytes(3, "big")
        + bytes((type_, flags))
        + (stream_id & 0x7FFF_FFFF).to_bytes(4, "big")
    )


def data_header(length: int, stream_id: int, *, end_stream: bool = False) -> bytes:
    return frame_header(length, DATA, FLAG_END_STREAM if end_stream else 0, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    if not 1 <= increment <= MAX_WINDOW:
        raise ValueError(f"window increment {increment} out of range")
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame: streams above ``last_stream_id`` were not and will not be processed."""
    payload = (last_stream_id & MAX_STREAM_ID).to_bytes(4, "big") + code.to_bytes(4, "big")
    return frame_header(8 + len(debug), GOAWAY, 0, 0) + payload + debug


def parse_goaway(buf: bytes | bytearray, start: int, length: int) -> tuple[int, int, bytes]:
    """``(last_stream_id, error code, debug data)`` of a GOAWAY payload of ``length`` >= 8."""
    last = int.from_bytes(buf[start : start + 4], "big") & MAX_STREAM_ID
    code = int.from_bytes(buf[start + 4 : start + 8], "big")
    return last, code, bytes(buf[start + 8 : start + length])


def empty_data_frame(stream_id: int, flags: int) -> bytes:
    """A DATA frame without payload (to end a stream with END_STREAM)."""
    return frame_header(0, DATA, flags & FLAG_END_STREAM, stream_id)


class PaddingError(ValueError):
    pass


def data_payload_bounds(header: FrameHeader, buf: bytes | bytearray, start: int) -> tuple[int, int]:
    """Offsets of the application bytes of a DATA frame whose payload begins at
    ``start``, with padding removed. Raise :class:`PaddingError` on bad padding."""
    end = start + header.length
    if header.flags & FLAG_PADDED:
        if header.length < 1:
            raise PaddingError("PADDED DATA frame without a pad length")
        pad = buf[start]
        if pad >= header.length:
            raise PaddingError(f"pad length {pad} >= frame length {header.length}")
        return start + 1, end - pad
    return start, end


def window_increment(buf: bytes | bytearray, start: int) -> int:
    return int.from_bytes(buf[start : start + 4], "big") & 0x7FFF_FFFF


class FrameError(Exception):
    """The peer broke HTTP/2 framing: a connection error with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameSink(Protocol):
    """What :class:`FrameReader` hands frames to (the connection)."""

    def on_frame(self, header: FrameHeader, body: int) -> None: ...
    def on_data(self, header: FrameHeader, body: int) -> None: ...
    def on_window_update(self, header: FrameHeader, body: int) -> None: ...
    def on_goaway(self, header: FrameHeader, body: int) -> None: ...
    def failed(self) -> bool: ...


PROTOCOL_ERROR: Final = 0x1
FRAME_SIZE_ERROR: Final = 0x6
_FIRST_ROOM: Final = 32 * 1024  # room offered to the first reads: a quiet connection stays small
_READ_ROOM: Final = 256 * 1024  # room once reads keep filling it (bulk: 64 KiB reads cost 24-36%)


class FrameReader:
    """The receive buffer of a connection and the splitting of it into frames.

    Plaintext is decrypted straight into :meth:`room`; :meth:`process` walks
    the complete frames in place: DATA, WINDOW_UPDATE and GOAWAY go to the sink's own
    handlers, every other frame to ``on_frame`` (their bytes stay readable in
    :attr:`view` during the call). A partial frame waits for more.

    The buffer starts at 64 KiB; the room it offers doubles, up to 256 KiB,
    each time a read fills it, and the buffer grows up to two maximal frames
    when a partial frame needs it. A thousand idle streams on ten connections
    so keep 640 KiB of buffers, not 5 MiB.
    """

    def __init__(
        self,
        *,
        max_frame_size: int,
        expect_preface: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_frame_size = max_frame_size
        self._clock = clock
        self._control = ResetBudget(CONTROL_BURST, CONTROL_RATE, clock())
        self._block = 0  # bytes of the header block being received
        self._largest = 2 * (max_frame_size + FRAME_HEADER_LEN)
        self._want = _FIRST_ROOM
        self.buf = bytearray(min(2 * _FIRST_ROOM, self._largest))
        self.view = memoryview(self.buf)
        self._start = 0
        self._end = 0
        self._preface_pending = expect_preface
        self._in_header_block = False

    def room(self) -> memoryview:
        """Free space at the end of the buffer to receive into: compacting first when
        low, and growing when what a partial frame holds leaves too little."""
        want = self._want
        if len(self.buf) - self._end < want:
            pending = bytes(self.view[self._start : self._end])  # at most one partial frame
            size = len(self.buf)
            while size - len(pending) < want and size < self._largest:
                size *= 2
            if size != len(self.buf):
                self.buf = bytearray(min(size, self._largest))
                self.view = memoryview(self.buf)
            self.buf[: len(pending)] = pending
            self._start, self._end = 0, len(pending)
        return self.view[self._end :]

    def received(self, n: int) -> None:
        if n >= len(self.buf) - self._end and self._want < _READ_ROOM:
            self._want *= 2  # the read filled the room: the peer is sending in bulk
        self._end += n

    def process(self, sink: FrameSink) -> None:
        """Hand every complete frame received so far to ``sink``; raise :class:`FrameError`."""
        buf, view = self.buf, self.view
        pos, end = self._start, self._end
        if self._preface_pending:
            plen = len(CONNECTION_PREFACE)
            got = bytes(view[pos : min(end, pos + plen)])
            if not CONNECTION_PREFACE.startswith(got):
                raise FrameError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            if len(got) < plen:
                return
            self._preface_pending = False
            pos += plen
        max_frame = self.max_frame_size
        while end - pos >= FRAME_HEADER_LEN:
            header = parse_header(buf, pos)
            if header.length > max_frame:
                raise FrameError(
                    FRAME_SIZE_ERROR,
                    f"frame of {header.length} bytes exceeds our maximum of {max_frame}",
                )
            body = pos + FRAME_HEADER_LEN
            frame_end = body + header.length
            if frame_end > end:
                break
            kind = header.type
            if sink.failed():
                return
            if self._in_header_block and kind != CONTINUATION:
                raise FrameError(
                    PROTOCOL_ERROR, "a frame other than CONTINUATION in a header block"
                )
            if kind == DATA:
                if not header.length and not header.flags & FLAG_END_STREAM:
                    self._take_control("empty DATA frames")
                sink.on_data(header, body)
            elif kind == WINDOW_UPDATE:
                sink.on_window_update(header, body)
            elif kind == GOAWAY:
                sink.on_goaway(header, body)
            else:
                if kind in (HEADERS, PUSH_PROMISE, CONTINUATION):
                    if kind == CONTINUATION and not self._in_header_block:
                        raise FrameError(PROTOCOL_ERROR, "CONTINUATION without a header block")
                    self._in_header_block = not header.flags & FLAG_END_HEADERS
                    size = FRAME_HEADER_LEN + header.length
                    self._block = size + (self._block if kind == CONTINUATION else 0)
                    if self._block > MAX_HEADER_BLOCK:
                        raise FrameError(
                            ENHANCE_YOUR_CALM,
                            f"header block over {MAX_HEADER_BLOCK} bytes (a CONTINUATION flood?)",
                        )
                elif kind in (PING, SETTINGS) and not header.flags & FLAG_ACK:
                    self._take_control("PING/SETTINGS frames to answer")
                elif kind == PRIORITY:
                    self._take_control("PRIORITY frames")
                sink.on_frame(header, body)
            pos = frame_end
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos

    def _take_control(self, what: str) -> None:
        """One frame that costs us work and the peer nothing; past the budget, a flood."""
        if not self._control.take(self._clock()):
            raise FrameError(ENHANCE_YOUR_CALM, f"too many {what} (a flood?)")
