"""GOAWAY owned by the engine, over memory streams: streams at or below the last
stream id finish in both directions, those above fail retryably and are never
processed, PING keeps working, and the connection closes when drained."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from mesh.hbone import H2Stream, HboneRequest, HboneSettings
from mesh.hbone.request import connect_handler
from mesh.hbone.server import ServerConnections, serve_hbone
from mesh.hbone.settings import HboneConnectionError, HboneRetryableError, HboneStreamTimeout
from tests.conftest import SERVER_ID
from tests.integration.h2_support import SMALL_WINDOWS, h2_pair, read_all
from tests.integration.hbone_support import client_pool, connect, echo_handler
from tests.pki import Pki
from tests.waiting import wait_until

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")]


async def _exchange(client: H2Stream, server: H2Stream, data: bytes) -> None:
    """Bytes both ways (WINDOW_UPDATEs too, when beyond a window), then END_STREAM
    both ways, on a stream that must keep working."""
    for sender, receiver in ((client, server), (server, client)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.send_all, data)
            got = bytearray()
            while len(got) < len(data):
                got += await receiver.receive_some()
        assert got == data
    await client.send_eof()
    assert await read_all(server) == b""
    await server.send_eof()
    assert await read_all(client) == b""


async def test_graceful_goaway_lets_streams_in_flight_finish_both_ways() -> None:
    with trio.fail_after(10):
        async with h2_pair() as pair:
            clients = [await pair.client.open_stream("10.0.0.2:80") for _ in range(3)]
            servers = [await pair.accepted.receive() for _ in range(3)]
            await clients[0].send_all(b"in flight")  # unread when the GOAWAY goes out
            await pair.server.graceful_goaway()
            await trio.testing.wait_all_tasks_blocked()
            assert not pair.client.is_available()  # a pool stops choosing it
            with pytest.raises(HboneRetryableError):
                pair.client.start_request(REQUEST)
            assert pair.server.goaway.statistics().sent_last_stream_id == 5
            assert await servers[0].receive_some() == b"in flight"
            for client, server in zip(clients, servers, strict=True):
                await _exchange(client, server, b"x" * 100_000)  # beyond one window
                await client.aclose()
                await server.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert pair.server.is_closed()
            assert pair.client.is_closed()


async def test_streams_above_the_last_stream_id_fail_retryably_unprocessed() -> None:
    with trio.fail_after(10):
        async with h2_pair() as pair:
            first = pair.client.start_request(REQUEST)
            processed = await pair.accepted.receive()
            late = [pair.client.start_request(REQUEST) for _ in range(2)]  # ids 3 and 5
            pair.server.send_goaway(first.stream_id)  # crosses them on the wire
            for stream in late:
                with pytest.raises(HboneRetryableError):
                    await stream.wait_response()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                pair.accepted.receive_nowait()  # never handed to the server's handler
            processed.send_headers([(":status", "200")])
            await first.wait_response()
            await _exchange(first, processed, b"still fine")
            await first.aclose()
            await processed.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert pair.client.is_closed()  # drained after the GOAWAY


async def test_goaway_then_immediate_close() -> None:
    with trio.fail_after(10):
        async with h2_pair() as pair:
            processed = await pair.client.open_stream("10.0.0.2:80")
            await pair.accepted.receive()
            late = pair.client.start_request(REQUEST)
            pair.server.close("shutting down")  # GOAWAY, then the transport closes
            with pytest.raises(HboneRetryableError):
                await late.wait_response()
            with pytest.raises(trio.BrokenResourceError):
                await processed.receive_some()
            await trio.testing.wait_all_tasks_blocked()
            assert pair.client.is_closed()


async def test_a_peer_that_sends_goaway_and_stays_idle_is_left() -> None:
    with trio.fail_after(10):
        async with h2_pair() as pair:
            stream = await pair.client.open_stream("10.0.0.2:80")
            server = await pair.accepted.receive()
            pair.server.send_goaway(stream.stream_id)  # and then nothing
            await trio.testing.wait_all_tasks_blocked()
            assert not pair.client.is_available()
            assert not pair.client.is_closed()  # its stream may still finish
            await pair.client.ping()  # PING after GOAWAY, both ways, does not raise
            await pair.server.ping()
            await _exchange(stream, server, b"last words")
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert pair.client.is_closed()  # the client let go once drained


async def test_connect_with_end_stream_is_answered_400() -> None:
    reached: list[HboneRequest] = []

    async def handler(request: HboneRequest) -> None:
        reached.append(request)
        await request.accept()

    with trio.fail_after(10):
        async with h2_pair(handler=connect_handler(handler)) as pair:
            stream = pair.client.start_request(
                [(":method", "CONNECT"), (":authority", "10.0.0.2:80")], end_stream=True
            )
            headers = dict(await stream.wait_response())
            assert headers[":status"] == "400"
            assert headers["ambit-reason"] == "bad_request"  # the code only, never the text
    assert reached == []


async def test_open_stream_has_a_deadline(autojump_clock: trio.abc.Clock) -> None:
    settings = HboneSettings(
        stream_window=SMALL_WINDOWS.stream_window,
        connection_window=SMALL_WINDOWS.connection_window,
        stream_open_timeout=3.0,
    )

    async def never_answers(stream: H2Stream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with h2_pair(settings, handler=never_answers) as pair:
            start = trio.current_time()
            with pytest.raises(HboneStreamTimeout, match="within 3s"):
                await pair.client.open_stream("10.0.0.2:80")
            assert trio.current_time() - start == pytest.approx(3.0)
            await trio.testing.wait_all_tasks_blocked()
            assert pair.client.statistics().streams == 0
            assert pair.client.is_available()  # one slow stream does not end the connection


async def test_graceful_goaway_ends_when_the_peer_goes_before_answering_its_ping(
    autojump_clock: trio.abc.Clock,
) -> None:
    """h2load does this: it sees the first GOAWAY, has no stream left and closes without
    answering the PING. The drain ends then, not after ``ping_timeout`` (20 s)."""
    with trio.fail_after(60):
        async with h2_pair() as pair:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pair.server.graceful_goaway)
                await trio.testing.wait_all_tasks_blocked()  # GOAWAY and PING are out
                pair.client.fail(HboneConnectionError("gone", code=0))  # never answers
            assert trio.current_time() - start < 1.0
            assert pair.server.is_closed()
            with pytest.raises(HboneConnectionError):
                await pair.server.ping()  # on a closed connection: at once


async def test_pool_leaves_a_server_that_says_goaway_and_stays_idle(root: Pki) -> None:
    """Over real mTLS: the server says GOAWAY (last id = the open stream) and then nothing,
    never closing. The pool stops choosing that connection, opens a new one for the next
    stream, lets the one in flight finish, then closes the old connection itself."""
    live = ServerConnections()
    cert = root.issue(SERVER_ID)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_hbone, echo_handler, certificate=lambda: cert, port=0,
                        connections=live)
            )  # fmt: skip
            async with client_pool(root) as pool:
                first = await connect(pool, address)
                await first.send_all(b"before")
                assert await first.receive_some() == b"before"
                (server_side,) = live.live
                server_side.send_goaway(server_side.h2.highest_inbound_stream_id)  # then idle
                await wait_until(lambda: pool.statistics()["streams"] == 1)
                second = await connect(pool, address)  # not on the connection going away
                assert pool.statistics()["connections_opened"] == 2
                await second.send_all(b"new")
                assert await second.receive_some() == b"new"
                await first.send_all(b"in flight")  # the old stream still works both ways
                assert await first.receive_some() == b"in flight"
                await first.send_eof()
                assert await read_all(first) == b""
                await wait_until(lambda: pool.statistics()["connections"] == 1)  # let go
                await wait_until(lambda: len(live.live) == 1)  # and the server saw it close
                await second.aclose()
            nursery.cancel_scope.cancel()
