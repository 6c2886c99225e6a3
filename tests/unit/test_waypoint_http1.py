"""HTTP/1.x reading and writing over an in-memory stream: framing, limits, errors."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from waypoint.http1 import (
    Http1Error,
    Limits,
    MessageReader,
    encode_chunk,
    encode_response_head,
    end_to_end,
)


async def reader_of(data: bytes, *, response: bool = False, limits: Limits | None = None,
                    pieces: int = 1) -> MessageReader:  # fmt: skip
    send, receive = trio.testing.memory_stream_pair()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        await send.send_all(data[i : i + step])
    await send.send_eof()
    return MessageReader(receive, response=response, limits=limits)


async def body_of(reader: MessageReader) -> bytes:
    out = b""
    while data := await reader.read_body():
        out += data
    return out


async def read_message(reader: MessageReader) -> bytes:
    await reader.read_head()
    return await body_of(reader)


@pytest.mark.parametrize("pieces", [1, 7, 200])
async def test_pipelined_requests_come_one_at_a_time(pieces: int) -> None:
    data = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /c HTTP/1.0\r\n\r\n"
    )
    reader = await reader_of(data, pieces=pieces)
    first = await reader.read_head()
    assert first is not None
    assert (first.method, first.target, first.content_length, first.chunked) == (
        b"POST", b"/a", 5, False,
    )  # fmt: skip
    assert first.header(b"host") == b"x"
    assert await body_of(reader) == b"hello"
    second = await reader.read_head()
    assert second is not None
    assert (second.method, second.chunked, second.has_body) == (b"PUT", True, True)
    assert await body_of(reader) == b"abcde"
    third = await reader.read_head()
    assert third is not None
    assert (third.version, third.keep_alive, third.has_body) == ("1.0", False, False)
    assert await reader.read_head() is None


async def test_an_unread_body_is_skipped_by_the_next_head() -> None:
    reader = await reader_of(
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
        b"xyzGET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert (await reader.read_head()) is not None
    second = await reader.read_head()
    assert second is not None
    assert second.target == b"/b"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nx-a: " + b"a" * 2000 + b"\r\n\r\n", 431),
        (b"GET /" + b"p" * 1100 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(30)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x", 400),  # closed inside the head
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),  # closed inside the body
    ],
)
async def test_bad_requests_say_which_status_to_answer(data: bytes, status: int) -> None:
    limits = Limits(max_head_bytes=1024, max_headers=20, max_url_bytes=1000)
    reader = await reader_of(data, limits=limits)
    with pytest.raises(Http1Error) as caught:
        await read_message(reader)
    assert caught.value.status == status


async def test_a_response_without_length_ends_with_the_connection() -> None:
    reader = await reader_of(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", response=True
    )
    head = await reader.read_head()
    assert head is not None
    assert head.status == 200
    assert await body_of(reader) == b"all of it"


async def test_interim_and_bodyless_responses() -> None:
    reader = await reader_of(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        response=True,
    )
    statuses = []
    while (head := await reader.read_head()) is not None:
        statuses.append(head.status)
        assert await body_of(reader) == b""
    assert statuses == [100, 204, 304]


async def test_an_upgrade_keeps_the_bytes_after_the_head() -> None:
    reader = await reader_of(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes"
    )
    head = await reader.read_head()
    assert head is not None
    assert head.upgrade
    assert await body_of(reader) == b""
    assert reader.upgraded == b"raw bytes"


def test_writing() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_response_head(404, [(b"a", b"b")]) == b"HTTP/1.1 404 Not Found\r\na: b\r\n\r\n"
    headers = [(b"connection", b"close, x-hop"), (b"x-hop", b"1"), (b"keep-alive", b"5"),
               (b"x-kept", b"2"), (b"transfer-encoding", b"chunked")]  # fmt: skip
    assert end_to_end(headers) == [(b"x-kept", b"2")]


def test_grpc_messages_are_counted_however_frames_cut_them() -> None:
    from waypoint.telemetry import GrpcMessages

    messages = [b"\x00" + len(m).to_bytes(4, "big") + m for m in (b"", b"a" * 70_000, b"xyz")]
    stream = b"".join(messages)
    for step in (1, 3, 5, 7, 4096, len(stream)):
        counter = GrpcMessages()
        for i in range(0, len(stream), step):
            counter.feed(stream[i : i + step])
        assert counter.count == 3, step
