"""HTTP/2 floods against ambit's engine (the server side a waypoint and ztunnel run): a
CONTINUATION flood (CVE-2024-27316) and a PING or SETTINGS flood get GOAWAY
ENHANCE_YOUR_CALM and the connection ends, while a healthy connection beside it keeps
being served. Frames are written with hyperframe, not with our own encoder."""

from __future__ import annotations

import trio
import trio.testing
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)

from mesh.hbone import H2Stream, HboneSettings, Http2Connection
from mesh.hbone.transport import StreamTransport
from tests.conftest import CLIENT_ID
from tests.integration.h2_support import h2_pair

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB


async def answer(stream: H2Stream) -> None:
    stream.send_headers([(":status", "200")], end_stream=True)
    await trio.lowlevel.checkpoint()


async def flood_until_goaway(frames: list[Frame]) -> int:
    """Send ``frames`` (after the preface and SETTINGS) to a server connection, reading
    what it answers; the error code of its GOAWAY."""
    client, server_side = trio.testing.memory_stream_pair()
    server = Http2Connection(
        StreamTransport(server_side), peer=CLIENT_ID, settings=HboneSettings(), handler=answer,
        client_side=False,
    )  # fmt: skip
    received = bytearray()
    code: int | None = None
    goaway = trio.Event()

    async def read() -> None:
        nonlocal code
        while data := await client.receive_some(65536):
            received.extend(data)
            pos = 0
            while len(received) - pos >= 9:
                frame, length = Frame.parse_frame_header(memoryview(received[pos : pos + 9]))
                if len(received) - pos < 9 + length:
                    break
                frame.parse_body(memoryview(received[pos + 9 : pos + 9 + length]))
                pos += 9 + length
                if isinstance(frame, GoAwayFrame):
                    code = frame.error_code
                    goaway.set()
                    return
            del received[:pos]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        nursery.start_soon(read)
        await client.send_all(PREFACE + SettingsFrame(0).serialize())
        for frame in frames:
            if code is not None:
                break
            try:
                await client.send_all(frame.serialize())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
        with trio.fail_after(5):
            await goaway.wait()
        nursery.cancel_scope.cancel()
    assert server.is_closed()
    assert code is not None
    return code


async def test_a_continuation_flood_gets_enhance_your_calm() -> None:
    opening = HeadersFrame(1)
    opening.data = b"\x82"  # :method GET, indexed; no END_HEADERS: more to come
    flood: list[Frame] = [opening]
    for _ in range(40):  # 40 x 16 KiB: far past the 256 KiB a header block may have
        more = ContinuationFrame(1)
        more.data = b"\x00" * 16_384
        flood.append(more)
    with trio.fail_after(10):
        assert await flood_until_goaway(flood) == ENHANCE_YOUR_CALM


async def test_ping_and_settings_floods_get_enhance_your_calm() -> None:
    with trio.fail_after(10):
        pings: list[Frame] = []
        for i in range(5000):
            ping = PingFrame(0)
            ping.opaque_data = i.to_bytes(8, "big")
            pings.append(ping)
        assert await flood_until_goaway(pings) == ENHANCE_YOUR_CALM
        settings: list[Frame] = [SettingsFrame(0, settings={0x3: 100}) for _ in range(5000)]
        assert await flood_until_goaway(settings) == ENHANCE_YOUR_CALM


async def test_a_client_that_pings_now_and_then_is_never_refused() -> None:
    with trio.fail_after(10):
        async with h2_pair(handler=answer) as pair:
            for _ in range(200):  # within the burst: a keepalive every few seconds is nothing
                await pair.client.ping()
            stream = pair.client.start_request(
                [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x")],
                end_stream=True,
            )
            assert dict(await stream.wait_response())[":status"] == "200"
            assert not pair.client.is_closed()
