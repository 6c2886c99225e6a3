"""The HTTP/2 frames the tunnel handles itself, as pure functions on bytes.

h2 would parse every DATA frame through hyperframe (copying the payload and,
for its debug log, hexlifying it even when logging is off). The tunnel instead
splits the received byte stream into frames here, keeps DATA and
WINDOW_UPDATE for itself and hands every other frame to h2 unchanged.
"""

from __future__ import annotations

from typing import Final, NamedTuple

FRAME_HEADER_LEN: Final = 9
CONNECTION_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA: Final = 0x0
HEADERS: Final = 0x1
PUSH_PROMISE: Final = 0x5
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

FLAG_END_STREAM: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8

MAX_WINDOW: Final = 2**31 - 1
MIN_FRAME_SIZE: Final = 16_384
MAX_FRAME_SIZE: Final = 2**24 - 1


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


def empty_data_frame(stream_id: int, flags: int) -> bytes:
    """A DATA frame without payload, given to h2 in place of one the tunnel consumed,
    so h2's stream state (END_STREAM, closed-stream errors) stays right."""
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
