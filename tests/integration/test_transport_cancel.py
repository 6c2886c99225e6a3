"""HTTP/2 carried in an HBONE stream (the waypoint's h2c sessions): a flush of the inner
connection's bytes cancelled part-way, when the outer stream's window ran out, sends the
rest once, never again what the stream already took."""

from __future__ import annotations

import trio

from mesh.hbone.transport import StreamTransport
from tests.integration.h2_support import h2_pair

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.2:80")]


async def test_a_cancelled_flush_never_sends_bytes_twice() -> None:
    payload = bytes(i % 251 for i in range(300_000))  # more than one 64 KiB window
    with trio.fail_after(10):
        async with h2_pair() as pair:
            outer = pair.client.start_request(CONNECT)
            await outer.wait_connect_answer()
            server_side = await pair.accepted.receive()
            transport = StreamTransport(outer)
            transport.write(payload)
            with trio.move_on_after(0.2):  # the peer reads nothing yet: the window runs out
                await transport.flush_batch()
            assert 0 < outer.queued < len(payload)
            assert transport.pending_output() == len(payload) - outer.queued
            received = bytearray()

            async def read() -> None:
                while len(received) < len(payload):
                    received.extend(await server_side.receive_some())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await transport.flush()
            assert bytes(received) == payload
