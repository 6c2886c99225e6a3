"""The tunnel's own frame handling, without sockets."""

from __future__ import annotations

from typing import cast

import pytest

from mesh.hbone import frames
from mesh.hbone.frames import FrameError, FrameHeader, FrameReader


class Recorder:
    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.events: list[tuple[str, object]] = []

    def on_frame(self, header: FrameHeader, body: int) -> None:
        frame = bytes(self.reader.view[body - frames.FRAME_HEADER_LEN : body + header.length])
        self.events.append(("frame", frame))

    def on_data(self, header: FrameHeader, body: int) -> None:
        payload = bytes(self.reader.view[body : body + header.length])
        self.events.append(("data", (header.stream_id, header.flags, payload)))

    def on_window_update(self, header: FrameHeader, body: int) -> None:
        self.events.append(
            ("wu", (header.stream_id, frames.window_increment(self.reader.buf, body)))
        )

    def on_goaway(self, header: FrameHeader, body: int) -> None:
        self.events.append(("goaway", frames.parse_goaway(self.reader.buf, body, header.length)))

    def failed(self) -> bool:
        return False


def feed(reader: FrameReader, sink: Recorder, data: bytes, step: int) -> None:
    """Hand ``data`` over in reads of ``step`` bytes, or of the room offered if less
    (as TLS decrypts at most the room it is given)."""
    i = 0
    while i < len(data):
        room = reader.room()
        piece = data[i : i + min(step, len(room))]
        room[: len(piece)] = piece
        reader.received(len(piece))
        reader.process(sink)
        i += len(piece)


SETTINGS = frames.frame_header(0, 0x4, 0, 0)
PING = frames.frame_header(8, 0x6, 0, 0) + b"12345678"


@pytest.mark.parametrize("step", [1, 7, 9, 100, 10_000])
def test_frames_split_the_same_however_the_bytes_arrive(step: int) -> None:
    stream = (
        frames.CONNECTION_PREFACE
        + SETTINGS
        + PING
        + frames.data_header(5, 1)
        + b"hello"
        + frames.window_update(0, 1000)
        + frames.data_header(0, 1, end_stream=True)
    )
    reader = FrameReader(max_frame_size=16384, expect_preface=True)
    sink = Recorder(reader)
    feed(reader, sink, stream, step)
    assert [e[1] for e in sink.events if e[0] == "frame"] == [SETTINGS, PING]
    ours = [e for e in sink.events if e[0] != "frame"]
    assert ours == [
        ("data", (1, 0, b"hello")),
        ("wu", (0, 1000)),
        ("data", (1, frames.FLAG_END_STREAM, b"")),
    ]


def test_control_frames_go_to_on_frame_one_by_one() -> None:
    reader = FrameReader(max_frame_size=16384, expect_preface=False)
    sink = Recorder(reader)
    feed(reader, sink, SETTINGS + PING + PING, 10_000)
    assert sink.events == [("frame", SETTINGS), ("frame", PING), ("frame", PING)]


def test_a_bad_preface_is_refused() -> None:
    reader = FrameReader(max_frame_size=16384, expect_preface=True)
    with pytest.raises(FrameError, match="preface"):
        feed(reader, Recorder(reader), b"GET / HTTP/1.1\r\n", 100)


def test_an_oversized_frame_is_refused_before_its_body_arrives() -> None:
    reader = FrameReader(max_frame_size=16384, expect_preface=False)
    with pytest.raises(FrameError, match="exceeds") as caught:
        feed(reader, Recorder(reader), frames.frame_header(16385, 0, 0, 1), 100)
    assert caught.value.code == frames.FRAME_SIZE_ERROR


def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    """HEADERS without END_HEADERS must be followed by CONTINUATION (RFC 9113 §6.10)."""
    headers = frames.frame_header(3, frames.HEADERS, 0, 1) + b"abc"
    data = frames.data_header(2, 1) + b"xy"
    reader = FrameReader(max_frame_size=16384, expect_preface=False)
    sink = Recorder(reader)
    with pytest.raises(FrameError, match="CONTINUATION") as caught:
        feed(reader, sink, headers + data, 10_000)
    assert caught.value.code == frames.PROTOCOL_ERROR
    assert sink.events == [("frame", headers)]


def test_a_continuation_out_of_a_header_block_is_a_protocol_error() -> None:
    reader = FrameReader(max_frame_size=16384, expect_preface=False)
    continuation = frames.frame_header(1, frames.CONTINUATION, frames.FLAG_END_HEADERS, 1) + b"a"
    with pytest.raises(FrameError, match="CONTINUATION"):
        feed(reader, Recorder(reader), continuation, 10_000)


def test_padding_is_removed_and_bad_padding_refused() -> None:
    header = FrameHeader(8, frames.DATA, frames.FLAG_PADDED, 1)
    buf = bytearray(b"\x03abcdPPP")
    assert frames.data_payload_bounds(header, buf, 0) == (1, 5)
    with pytest.raises(frames.PaddingError):
        frames.data_payload_bounds(
            FrameHeader(3, 0, frames.FLAG_PADDED, 1), bytearray(b"\x05ab"), 0
        )


def test_large_streams_compact_the_buffer_without_losing_bytes() -> None:
    reader = FrameReader(max_frame_size=1024 * 1024, expect_preface=False)
    sink = Recorder(reader)
    payloads = [bytes([i % 251]) * (300_000 + i) for i in range(40)]
    stream = b"".join(frames.data_header(len(p), 3) + p for p in payloads)
    feed(reader, sink, stream, 65_536 * 3 + 5)
    assert [e[1][2] for e in sink.events] == payloads  # type: ignore[index]


def test_buffer_stays_small_for_small_frames_and_grows_for_bulk() -> None:
    reader = FrameReader(max_frame_size=1024 * 1024, expect_preface=False)
    sink = Recorder(reader)
    small = frames.data_header(1024, 1) + b"r" * 1024
    feed(reader, sink, small * 50, len(small))
    assert len(reader.buf) == 64 * 1024  # request-sized reads never grow it
    bulk = b"".join(frames.data_header(16_000, 1) + b"b" * 16_000 for _ in range(200))
    feed(reader, sink, bulk, 10**9)  # each read fills the room offered
    assert len(reader.room()) >= 256 * 1024
    received = [cast(tuple[int, int, bytes], e[1])[2] for e in sink.events if e[0] == "data"]
    assert sum(map(len, received)) == 50 * 1024 + 200 * 16_000


def _flood(frame: bytes, count: int) -> FrameError | None:
    """Feed ``count`` copies of ``frame`` at one instant; the error it ended with."""
    reader = FrameReader(max_frame_size=16384, expect_preface=False, clock=lambda: 0.0)
    try:
        feed(reader, Recorder(reader), frame * count, 65_536)
    except FrameError as exc:
        return exc
    return None


def test_frames_that_cost_us_work_for_nothing_are_a_flood_past_the_burst() -> None:
    empty_data = frames.data_header(0, 1)
    priority = frames.frame_header(5, 0x2, 0, 1) + bytes(5)
    for frame in (empty_data, priority):
        assert _flood(frame, frames.CONTROL_BURST) is None
        error = _flood(frame, frames.CONTROL_BURST + 1)
        assert error is not None
        assert error.code == frames.ENHANCE_YOUR_CALM
    # The empty DATA frame that ends a stream is how many requests end: never counted.
    assert _flood(frames.data_header(0, 1, end_stream=True), 5 * frames.CONTROL_BURST) is None


def test_empty_continuations_count_their_frame_headers_against_the_block() -> None:
    """Zero-length CONTINUATIONs never grow a block's bytes: without their headers
    counted, a peer could keep one header block open (and its list of parts growing)
    for ever."""
    opening = frames.frame_header(1, frames.HEADERS, 0, 1) + b"\x82"
    empty = frames.frame_header(0, frames.CONTINUATION, 0, 1)
    reader = FrameReader(max_frame_size=16384, expect_preface=False)
    sink = Recorder(reader)
    with pytest.raises(FrameError, match="header block") as caught:
        feed(reader, sink, opening + empty * 40_000, 65_536)
    assert caught.value.code == frames.ENHANCE_YOUR_CALM
    assert len(sink.events) <= frames.MAX_HEADER_BLOCK // frames.FRAME_HEADER_LEN
