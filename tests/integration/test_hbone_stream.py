"""An HBONE stream behaves as a trio HalfCloseableStream and carries bytes exactly."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import trio
import trio.testing

from mesh.hbone import HboneRequest, HboneSettings, HboneStream
from tests.conftest import SERVER_ID
from tests.integration.hbone_support import (
    client_pool,
    connect,
    echo_handler,
    hash_handler,
    read_all,
    start_server,
)
from tests.pki import Pki
from tests.waiting import wait_until

SMALL_WINDOWS = HboneSettings(stream_window=65_535, connection_window=16 * 1024 * 1024)


async def test_hbone_stream_passes_trio_half_closeable_checks(root: Pki) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server_side: trio.MemorySendChannel[HboneStream]
            server_side, accepted = trio.open_memory_channel[HboneStream](1)

            async def hand_over(request: HboneRequest) -> None:
                stream = await request.accept()
                await server_side.send(stream)
                await trio.sleep_forever()  # the test owns the stream now

            address = await start_server(nursery, hand_over, root.issue(SERVER_ID), SMALL_WINDOWS)
            async with client_pool(root, SMALL_WINDOWS) as pool:

                async def stream_maker() -> tuple[HboneStream, HboneStream]:
                    client = await connect(pool, address)
                    return client, await accepted.receive()

                async def clogged_stream_maker() -> tuple[HboneStream, HboneStream]:
                    client, server = await stream_maker()
                    # Fill both stream windows: the next send_all in either direction blocks.
                    await client.send_all(b"x" * SMALL_WINDOWS.stream_window)
                    await server.send_all(b"y" * SMALL_WINDOWS.stream_window)
                    return client, server

                await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_256_mib_through_one_stream_arrive_byte_exact(root: Pki) -> None:
    size = 256 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    expected = hashlib.sha256()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, hash_handler, root.issue(SERVER_ID))
            async with client_pool(root) as pool:
                stream = await connect(pool, address)
                rng = random.Random(1)
                sent = 0
                while sent < size:
                    # Vary chunk sizes and contents so framing bugs cannot hide.
                    n = min(rng.randint(1, len(block)), size - sent)
                    offset = rng.randint(0, len(block) - n)
                    chunk = block[offset : offset + n]
                    expected.update(chunk)
                    await stream.send_all(chunk)
                    sent += n
                await stream.send_eof()
                answer = await read_all(stream)
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert answer.decode() == f"{expected.hexdigest()} {size}"


async def test_thousand_concurrent_streams_share_one_connection(root: Pki) -> None:
    settings = HboneSettings(max_concurrent_streams=1000)
    results: dict[int, tuple[str, str]] = {}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, hash_handler, root.issue(SERVER_ID), settings)
            async with client_pool(root, settings) as pool:
                opened = trio.Event()
                streams: list[HboneStream] = []

                async def one(i: int) -> None:
                    stream = await connect(pool, address)
                    streams.append(stream)
                    if len(streams) == 1000:
                        opened.set()
                    await opened.wait()  # all 1,000 are open at the same time
                    payload = random.Random(i).randbytes(8192 + i * 37)
                    await stream.send_all(payload)
                    await stream.send_eof()
                    answer = (await read_all(stream)).decode()
                    await stream.aclose()
                    results[i] = (answer, f"{hashlib.sha256(payload).hexdigest()} {len(payload)}")

                async with trio.open_nursery() as clients:
                    for i in range(1000):
                        clients.start_soon(one, i)
                stats = pool.statistics()
            nursery.cancel_scope.cancel()
    assert len(results) == 1000
    assert all(got == want for got, want in results.values())
    assert stats["connections_opened"] == 1


async def test_pool_opens_a_new_connection_past_the_stream_limit(root: Pki) -> None:
    settings = HboneSettings(max_concurrent_streams=2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID))
            async with client_pool(root, settings) as pool:
                streams = [await connect(pool, address) for _ in range(5)]
                assert pool.statistics()["connections"] == 3
                for i, stream in enumerate(streams):
                    await stream.send_all(b"ping %d" % i)
                    assert await stream.receive_some() == b"ping %d" % i
                    await stream.aclose()
                # Slots freed by closed streams are reused instead of dialling again.
                again = await connect(pool, address)
                assert pool.statistics()["connections_opened"] == 3
                await again.aclose()
            nursery.cancel_scope.cancel()


async def test_half_close_client_to_server_then_server_keeps_sending(root: Pki) -> None:
    async def late_talker(request: HboneRequest) -> None:
        stream = await request.accept()
        got = await read_all(stream)  # until the client's send_eof
        for _ in range(100):
            await stream.send_all(got)  # our direction is still open
        await stream.send_eof()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, late_talker, root.issue(SERVER_ID))
            async with client_pool(root) as pool:
                stream = await connect(pool, address)
                await stream.send_all(b"0123456789" * 1000)
                await stream.send_eof()
                with pytest.raises(trio.ClosedResourceError):
                    await stream.send_all(b"more")
                assert await read_all(stream) == b"0123456789" * 1000 * 100
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_half_close_server_to_client_then_client_keeps_sending(root: Pki) -> None:
    async def greeter(request: HboneRequest) -> None:
        stream = await request.accept()
        await stream.send_all(b"hello, then EOF")
        await stream.send_eof()
        got = await read_all(stream)
        results.append(got)

    results: list[bytes] = []
    payload = os.urandom(3 * 1024 * 1024)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, greeter, root.issue(SERVER_ID))
            async with client_pool(root) as pool:
                stream = await connect(pool, address)
                assert await read_all(stream) == b"hello, then EOF"
                await stream.send_all(payload)
                await stream.send_eof()
                await trio.testing.wait_all_tasks_blocked()
                await wait_until(lambda: results)
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert results == [payload]


async def test_slow_reader_backpressures_the_sender(root: Pki) -> None:
    """A reader that does not read stops the sender at the window; nothing piles up."""
    release = trio.Event()
    buffered: list[int] = []

    async def stalled(request: HboneRequest) -> None:
        stream = await request.accept()
        await release.wait()
        buffered.append(stream.statistics().buffered)
        await read_all(stream)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, stalled, root.issue(SERVER_ID), SMALL_WINDOWS)
            async with client_pool(root, SMALL_WINDOWS) as pool:
                stream = await connect(pool, address)
                with trio.move_on_after(1) as blocked:
                    await stream.send_all(b"z" * (10 * SMALL_WINDOWS.stream_window))
                assert blocked.cancelled_caught, "send_all finished though nobody read"
                release.set()
                await stream.send_all(b"z" * (10 * SMALL_WINDOWS.stream_window))
                await stream.send_eof()
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert len(buffered) == 1
    assert buffered[0] <= SMALL_WINDOWS.stream_window
