"""The HTTP/2 rules the engine keeps besides DATA and flow control (RFC 9113), sans-IO:
header blocks (HEADERS, CONTINUATION, HPACK), SETTINGS, PING, RST_STREAM and PRIORITY
frames, stream identifiers, and what makes a header list malformed.

Why not the h2 library, which did this before: every request through a waypoint is four
header blocks (request and response, each way), and h2 spent 78 us sending one and 97 us
receiving one, against 12 and 16 us for HPACK itself; most of the rest is its event
objects, its per-stream state machine and header validation built of chained
generators. Here a received block costs hpack's decoding and one pass of checks, and a
sent one a lookup per field (:mod:`mesh.hbone.hpack_out`).

What stays with :class:`~mesh.hbone.engine.Http2Engine`: the stream table and each
stream's state (:class:`~mesh.hbone.stream.H2Stream`), DATA, WINDOW_UPDATE, GOAWAY and
flow control. A connection error is :class:`~mesh.hbone.frames.FrameError` (the engine
answers GOAWAY and ends the connection); a stream error is :class:`StreamError` (the
engine resets that stream and goes on).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

import hpack
from h2.errors import ErrorCodes

from mesh.hbone import frames, huffman_memo
from mesh.hbone.frames import FrameError, FrameHeader
from mesh.hbone.hpack_out import StaticEncoder

huffman_memo.install()  # repeated Huffman-coded strings decoded once

RST_STREAM: Final = 0x3
PRIORITY: Final = 0x2
FLAG_PRIORITY: Final = 0x20

HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

# One stream's header list over this (RFC 7541's size: name, value and 32 a field) is
# refused with its stream alone (a request: 431), unless SETTINGS say another limit.
DEFAULT_MAX_HEADER_LIST: Final = 64 * 1024
# A header block that decodes to more than this (an HPACK bomb) ends the connection with
# GOAWAY ENHANCE_YOUR_CALM: the flood bound of the encoded block (frames.MAX_HEADER_BLOCK).
MAX_DECODED_HEADER_LIST: Final = 256 * 1024
UNLIMITED: Final = 2**31 - 1
DECODED_KEPT: Final = 16  # decoded header blocks kept per connection
DECODED_MAX_BYTES: Final = 1024  # a larger block is decoded each time
_RESETS_REMEMBERED: Final = 1024  # streams we reset whose late frames are ignored

# RFC 9113 §8.2.1: a field name is lower-case tchars; a value has no NUL, CR or LF and
# neither starts nor ends with a space or a tab.
_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE: Final = re.compile(r"[\x00\r\n]|^[ \t]|[ \t]$")
_CONNECTION_SPECIFIC: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
_REQUEST_PSEUDO: Final = frozenset({":method", ":scheme", ":authority", ":path"})
_SETTINGS_ITEM: Final = struct.Struct(">HI")


class StreamError(Exception):
    """One stream broke the protocol: it is reset with ``code``; the connection goes on."""

    def __init__(self, stream_id: int, code: int, reason: str) -> None:
        super().__init__(reason)
        self.stream_id = stream_id
        self.code = code
        self.reason = reason


class HeaderListTooLarge(StreamError):
    """A stream's header list over our limit: a request is answered 431 (RFC 9113
    §10.5.1), anything else is reset; the connection goes on."""

    def __init__(self, stream_id: int, size: int, limit: int) -> None:
        reason = f"header list of {size} bytes over the limit of {limit}"
        super().__init__(stream_id, frames.ENHANCE_YOUR_CALM, reason)
        self.size = size
        self.limit = limit


@dataclass
class Settings:
    """One side's SETTINGS (RFC 9113 §6.5.2), starting from the protocol's defaults."""

    header_table_size: int = 4096
    enable_push: int = 1
    max_concurrent_streams: int = UNLIMITED
    initial_window_size: int = 65_535
    max_frame_size: int = frames.MIN_FRAME_SIZE
    max_header_list_size: int | None = None


@dataclass
class HeaderBlock:
    """A header block being received: HEADERS and the CONTINUATIONs after it."""

    stream_id: int
    end_stream: bool
    parts: list[bytes]
    error: StreamError | None = None  # decoded all the same: HPACK's table must stay in step


class H2Protocol:
    """The connection-wide HTTP/2 state that is not flow control, and the bytes to send."""

    def __init__(self, *, client_side: bool, local: Settings, out: bytearray | None = None) -> None:
        self.client_side = client_side
        self.local = local
        self.remote = Settings()
        self.encoder = StaticEncoder()
        self.header_list_limit = local.max_header_list_size or DEFAULT_MAX_HEADER_LIST
        self.decoder = hpack.Decoder(
            max_header_list_size=max(MAX_DECODED_HEADER_LIST, self.header_list_limit)
        )
        self.decoder.max_allowed_table_size = local.header_table_size
        # Decoded blocks, reused while the decoder's table stays as it was (see decode).
        self._decoded: dict[bytes, tuple[tuple[str, str], ...]] = {}
        self._table_adds = 0
        table = self.decoder.header_table
        add = table.add

        def counted_add(name: bytes, value: bytes) -> None:
            self._table_adds += 1
            add(name, value)

        table.add = counted_add  # type: ignore[method-assign]
        self._decoded_at = (0, table.maxsize)
        self.out = bytearray() if out is None else out  # the writer's batch: frames in order
        self.highest_inbound_stream_id = 0
        self._next_id = 1 if client_side else 2
        self._block: HeaderBlock | None = None
        self._reset: dict[int, None] = {}  # streams we reset lately, the oldest first

    # ---- sending ----------------------------------------------------------------

    def initiate(self, connection_window: int) -> None:
        """The preface (client), our SETTINGS and the connection window beyond 65,535."""
        if self.client_side:
            self.out += frames.CONNECTION_PREFACE
        local, default = self.local, Settings()
        values = [
            (HEADER_TABLE_SIZE, local.header_table_size, default.header_table_size),
            (ENABLE_PUSH, local.enable_push, default.enable_push),
            (MAX_CONCURRENT_STREAMS, local.max_concurrent_streams, default.max_concurrent_streams),
            (INITIAL_WINDOW_SIZE, local.initial_window_size, default.initial_window_size),
            (MAX_FRAME_SIZE, local.max_frame_size, default.max_frame_size),
        ]
        if local.max_header_list_size is not None:
            values.append((MAX_HEADER_LIST_SIZE, local.max_header_list_size, -1))
        payload = b"".join(_SETTINGS_ITEM.pack(code, v) for code, v, d in values if v != d)
        self.out += frames.frame_header(len(payload), frames.SETTINGS, 0, 0) + payload
        if connection_window > 65_535:
            self.out += frames.window_update(0, connection_window - 65_535)

    def get_next_available_stream_id(self) -> int:
        """The id our next stream gets (used once its HEADERS are sent)."""
        return self._next_id

    def send_headers(
        self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool
    ) -> None:
        """HPACK-encode ``headers`` into HEADERS (and CONTINUATIONs past the peer's frame size)."""
        if stream_id >= self._next_id and (stream_id % 2 == 1) == self.client_side:
            self._next_id = stream_id + 2
        block = self.encoder.encode(headers)
        size = self.remote.max_frame_size
        flags = frames.FLAG_END_STREAM if end_stream else 0
        if len(block) <= size:
            self.out += frames.frame_header(
                len(block), frames.HEADERS, flags | frames.FLAG_END_HEADERS, stream_id
            )
            self.out += block
            return
        view = memoryview(block)
        kind = frames.HEADERS
        while view:
            part, view = view[:size], view[size:]
            last = frames.FLAG_END_HEADERS if not view else 0
            self.out += frames.frame_header(len(part), kind, flags | last, stream_id)
            self.out += part
            kind, flags = frames.CONTINUATION, 0

    def send_end_stream(self, stream_id: int) -> None:
        self.out += frames.empty_data_frame(stream_id, frames.FLAG_END_STREAM)

    def send_rst_stream(self, stream_id: int, code: int) -> None:
        self.out += frames.frame_header(4, RST_STREAM, 0, stream_id) + code.to_bytes(4, "big")
        reset = self._reset
        reset[stream_id] = None
        if len(reset) > _RESETS_REMEMBERED:
            del reset[next(iter(reset))]

    def send_ping(self, data: bytes, *, ack: bool = False) -> None:
        flags = frames.FLAG_ACK if ack else 0
        self.out += frames.frame_header(8, frames.PING, flags, 0) + data

    # ---- stream ids -------------------------------------------------------------

    def opened_by_peer(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) != self.client_side

    def is_idle(self, stream_id: int) -> bool:
        """Never used yet (RFC 9113 §5.1): a frame other than HEADERS or PRIORITY on it is a
        connection error."""
        if self.opened_by_peer(stream_id):
            return stream_id > self.highest_inbound_stream_id
        return stream_id >= self._next_id

    def reset_by_us(self, stream_id: int) -> bool:
        """We reset it lately: what the peer sent before it knew is ignored (RFC 9113 §5.1)."""
        return stream_id in self._reset

    def accept_new_stream(self, stream_id: int) -> None:
        """The peer opens ``stream_id`` with HEADERS: it must be new and above the last."""
        if not self.opened_by_peer(stream_id):
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, f"HEADERS on unexpected stream {stream_id}")
        if stream_id <= self.highest_inbound_stream_id:
            raise FrameError(ErrorCodes.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.highest_inbound_stream_id = stream_id

    # ---- receiving --------------------------------------------------------------

    def on_headers(self, header: FrameHeader, buf: bytearray, body: int) -> HeaderBlock | None:
        """A HEADERS frame: the block, when this frame ends it (else CONTINUATIONs follow)."""
        sid, flags, length = header.stream_id, header.flags, header.length
        if sid == 0:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = body, body + length
        if flags & frames.FLAG_PADDED:
            if length < 1:
                raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "padded HEADERS without its length")
            pad = buf[start]
            start += 1
            if pad > stop - start - (5 if flags & FLAG_PRIORITY else 0):
                raise FrameError(ErrorCodes.PROTOCOL_ERROR, "HEADERS padding longer than the frame")
            stop -= pad
        block = HeaderBlock(sid, bool(flags & frames.FLAG_END_STREAM), [])
        if flags & FLAG_PRIORITY:
            if stop - start < 5:
                raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if int.from_bytes(buf[start : start + 4], "big") & 0x7FFF_FFFF == sid:
                block.error = StreamError(
                    sid, ErrorCodes.PROTOCOL_ERROR, "stream depends on itself"
                )
            start += 5
        block.parts.append(bytes(buf[start:stop]))
        if flags & frames.FLAG_END_HEADERS:
            return block
        self._block = block
        return None

    def on_continuation(self, header: FrameHeader, buf: bytearray, body: int) -> HeaderBlock | None:
        block = self._block
        if block is None or header.stream_id != block.stream_id:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block.parts.append(bytes(buf[body : body + header.length]))
        if not header.flags & frames.FLAG_END_HEADERS:
            return None
        self._block = None
        return block

    def decode(self, block: HeaderBlock) -> list[tuple[str, str]]:
        """The block's header list. A block that left the decoder's dynamic table as it
        was (static indexes, literals without indexing, references to entries) means the
        same again as long as the table has not changed since: such blocks are kept (up to
        :data:`DECODED_KEPT` per connection) and the next identical one costs a lookup,
        not HPACK's Huffman decoding in Python (blocks up to :data:`DECODED_MAX_BYTES`; a peer
        repeats its blocks: nginx's answers
        within a second, h2load's and grpc-go's requests once their fields are indexed)."""
        data = block.parts[0] if len(block.parts) == 1 else b"".join(block.parts)
        table = self.decoder.header_table
        state = (self._table_adds, table.maxsize)
        if state == self._decoded_at:
            if (kept := self._decoded.get(data)) is not None:
                return list(kept)
        else:
            self._decoded.clear()
            self._decoded_at = state
        try:
            headers: list[tuple[str, str]] = self.decoder.decode(data)  # type: ignore[assignment]
        except hpack.OversizedHeaderListError as exc:
            raise FrameError(frames.ENHANCE_YOUR_CALM, f"header list too large: {exc}") from None
        except (hpack.HPACKError, IndexError, TypeError) as exc:
            raise FrameError(ErrorCodes.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        size = sum(len(name) + len(value) for name, value in headers) + 32 * len(headers)
        if size > self.header_list_limit:  # decoded whole: the table is in step
            if block.error is None:
                block.error = HeaderListTooLarge(block.stream_id, size, self.header_list_limit)
            return headers
        if (self._table_adds, table.maxsize) == state and len(data) <= DECODED_MAX_BYTES:
            if len(self._decoded) >= DECODED_KEPT:
                self._decoded.clear()
            self._decoded[data] = tuple(headers)
        return headers

    def on_settings(self, header: FrameHeader, buf: bytearray, body: int) -> dict[int, int] | None:
        """The peer's SETTINGS: what changed (code -> previous value), None for an ACK.
        The acknowledgement is queued."""
        if header.stream_id != 0:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
        if header.flags & frames.FLAG_ACK:
            if header.length:
                raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return None
        if header.length % 6:
            raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        remote, changed = self.remote, {}
        for pos in range(body, body + header.length, 6):
            code, value = _SETTINGS_ITEM.unpack_from(buf, pos)
            if code == HEADER_TABLE_SIZE:
                changed[code], remote.header_table_size = remote.header_table_size, value
                if value < changed[code]:
                    self.encoder.peer_table_size(value)
            elif code == ENABLE_PUSH:
                if value > 1:
                    raise FrameError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
                changed[code], remote.enable_push = remote.enable_push, value
            elif code == MAX_CONCURRENT_STREAMS:
                changed[code], remote.max_concurrent_streams = remote.max_concurrent_streams, value
            elif code == INITIAL_WINDOW_SIZE:
                if value > frames.MAX_WINDOW:
                    raise FrameError(ErrorCodes.FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                changed[code], remote.initial_window_size = remote.initial_window_size, value
            elif code == MAX_FRAME_SIZE:
                if not frames.MIN_FRAME_SIZE <= value <= frames.MAX_FRAME_SIZE:
                    raise FrameError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE invalid")
                changed[code], remote.max_frame_size = remote.max_frame_size, value
            elif code == MAX_HEADER_LIST_SIZE:
                changed[code], remote.max_header_list_size = remote.max_header_list_size or 0, value
            # unknown settings are ignored (RFC 9113 §6.5.2)
        self.out += frames.frame_header(0, frames.SETTINGS, frames.FLAG_ACK, 0)
        return changed

    def on_ping(self, header: FrameHeader, buf: bytearray, body: int) -> bytes | None:
        """A PING: its payload when it answers ours, else None (our answer is queued)."""
        if header.stream_id != 0:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
        if header.length != 8:
            raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "PING not 8 bytes long")
        data = bytes(buf[body : body + 8])
        if header.flags & frames.FLAG_ACK:
            return data
        self.send_ping(data, ack=True)
        return None

    def on_rst_stream(self, header: FrameHeader, buf: bytearray, body: int) -> int:
        sid = header.stream_id
        if sid == 0:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if header.length != 4:
            raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes long")
        if self.is_idle(sid):
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        return int.from_bytes(buf[body : body + 4], "big")

    def on_priority(self, header: FrameHeader, buf: bytearray, body: int) -> None:
        """PRIORITY is checked and otherwise ignored (RFC 9113 §5.3.2 deprecates it)."""
        sid = header.stream_id
        if sid == 0:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if header.length != 5:
            raise StreamError(sid, ErrorCodes.FRAME_SIZE_ERROR, "PRIORITY not 5 bytes long")
        if int.from_bytes(buf[body : body + 4], "big") & 0x7FFF_FFFF == sid:
            raise StreamError(sid, ErrorCodes.PROTOCOL_ERROR, "stream depends on itself")


# ---- malformed header lists (RFC 9113 §8.1.1, §8.2, §8.3) ----------------------------


def check_fields(headers: list[tuple[str, str]], *, pseudo_allowed: frozenset[str]) -> set[str]:
    """Check every field; return the pseudo-header names (each at most once, all first)."""
    pseudo: set[str] = set()
    regular = False
    length: str | None = None
    for name, value in headers:
        if name[:1] == ":":
            if regular:
                raise ValueError(f"pseudo-header {name} after a regular field")
            if name not in pseudo_allowed:
                raise ValueError(f"pseudo-header {name} not allowed here")
            if name in pseudo:
                raise ValueError(f"pseudo-header {name} repeated")
            pseudo.add(name)
        else:
            regular = True
            if not _NAME.fullmatch(name):
                raise ValueError(f"invalid field name {name!r}")
            if name in _CONNECTION_SPECIFIC:
                raise ValueError(f"connection-specific field {name}")
            if name == "te" and value.lower() != "trailers":
                raise ValueError("te other than trailers")
            if name == "content-length":  # 1*DIGIT: "²" is a digit to str.isdigit, not to int()
                if not (value.isascii() and value.isdigit()) or length not in (None, value):
                    raise ValueError("invalid or repeated content-length")
                length = value
        if value and _BAD_VALUE.search(value):
            raise ValueError(f"invalid value of field {name}")
    return pseudo


def check_request(headers: list[tuple[str, str]]) -> None:
    """Raise ValueError saying why ``headers`` is not a well-formed request head."""
    pseudo = check_fields(headers, pseudo_allowed=_REQUEST_PSEUDO)
    method = path = authority = host = None
    for name, value in headers:
        if name == ":method":
            method = value
        elif name == ":path":
            path = value
        elif name == ":authority":
            authority = value
        elif name == "host":
            if host is not None:
                raise ValueError("several host fields")
            host = value
    if method is None:
        raise ValueError("no :method")
    if method == "CONNECT":
        if ":scheme" in pseudo or ":path" in pseudo:
            raise ValueError("CONNECT with :scheme or :path")
        if authority is None:
            raise ValueError("CONNECT without :authority")
    elif ":scheme" not in pseudo or not path:
        raise ValueError("no :scheme or an empty :path")
    if authority is not None and host is not None and authority != host:
        raise ValueError(":authority and host disagree")


def check_response(headers: list[tuple[str, str]]) -> int:
    """The ``:status`` of a well-formed response head; ValueError otherwise."""
    check_fields(headers, pseudo_allowed=frozenset({":status"}))
    status = headers[0][1] if headers and headers[0][0] == ":status" else ""
    if len(status) != 3 or not status.isdigit():
        raise ValueError("no valid :status")
    return int(status)


def check_trailers(headers: list[tuple[str, str]]) -> None:
    check_fields(headers, pseudo_allowed=frozenset())
