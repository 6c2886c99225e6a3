"""The HTTP/2 engine over memory streams: stream semantics, flow control read
through statistics(), headers and trailers both ways."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from h2.errors import ErrorCodes

from mesh.hbone import H2Stream, Http2Connection, StreamState
from mesh.hbone.stream import StreamReset
from mesh.hbone.transport import StreamTransport
from tests.integration.h2_support import SMALL_WINDOWS, h2_pair, read_all

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/echo")]


async def test_h2_stream_passes_trio_half_closeable_checks() -> None:
    with trio.fail_after(30):
        async with h2_pair() as pair:

            async def stream_maker() -> tuple[H2Stream, H2Stream]:
                client = await pair.client.open_stream("10.0.0.2:80")
                server = await pair.accepted.receive()
                return client, server

            async def clogged_stream_maker() -> tuple[H2Stream, H2Stream]:
                client = pair.client.start_request(REQUEST)
                server = await pair.accepted.receive()
                server.send_headers([(":status", "200")])
                await client.wait_response()
                # Fill both stream windows: the next send_all in either direction blocks.
                await client.send_all(b"x" * SMALL_WINDOWS.stream_window)
                await server.send_all(b"y" * SMALL_WINDOWS.stream_window)
                return client, server

            await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


async def test_credit_returns_only_as_the_consumer_reads() -> None:
    window = SMALL_WINDOWS.stream_window
    with trio.fail_after(10):
        async with h2_pair() as pair:
            client = await pair.client.open_stream("10.0.0.2:80")
            server = await pair.accepted.receive()
            with trio.move_on_after(0.5) as blocked:
                await client.send_all(b"z" * (3 * window))
            assert blocked.cancelled_caught, "send_all finished though nobody read"
            stats = server.statistics()
            assert stats.buffered == window  # exactly one window waits, nothing more
            assert stats.receive_window.available == 0
            assert stats.receive_window.unacked == 0  # buffered is not consumed
            assert client.statistics().send_window == 0
            await server.receive_some(window // 2)
            stats = server.statistics()
            await trio.testing.wait_all_tasks_blocked()
            assert client.statistics().send_window > 0  # the WINDOW_UPDATE arrived


async def test_connection_window_comes_back_whole_after_streams_end() -> None:
    with trio.fail_after(10):
        async with h2_pair() as pair:
            for _ in range(5):
                client = await pair.client.open_stream("10.0.0.2:80")
                server = await pair.accepted.receive()
                await client.send_all(b"a" * 50_000)
                await client.aclose()  # the server never reads: the reset gives credit back
                await trio.testing.wait_all_tasks_blocked()
                assert server.statistics().state is StreamState.CLOSED
            window = pair.server.statistics().receive_window
            assert pair.server.statistics().streams == 0
            assert window.available + window.unacked == SMALL_WINDOWS.connection_window


async def test_headers_and_trailers_both_ways() -> None:
    async def echo(stream: H2Stream) -> None:
        body = await read_all(stream)
        stream.send_headers([(":status", "200"), ("content-type", "text/plain")])
        await stream.send_all(body)
        await stream.send_trailers(
            [("grpc-status", "0"), ("x-seen", dict(stream.trailers)["x-sum"])]
        )

    with trio.fail_after(10):
        async with h2_pair(handler=echo) as pair:
            stream = pair.client.start_request(REQUEST)
            await stream.send_all(b"hello")
            await stream.send_trailers([("x-sum", "5")])
            headers = await stream.wait_response()
            assert dict(headers)[":status"] == "200"
            assert await read_all(stream) == b"hello"
            assert stream.trailers == [("grpc-status", "0"), ("x-seen", "5")]
            assert stream.statistics().state is StreamState.CLOSED


async def test_states_follow_end_stream_each_way() -> None:
    with trio.fail_after(10):
        async with h2_pair() as pair:
            client = await pair.client.open_stream("10.0.0.2:80")
            server = await pair.accepted.receive()
            assert client.statistics().state is StreamState.OPEN
            await client.send_eof()
            assert client.statistics().state is StreamState.HALF_CLOSED_LOCAL
            assert await server.receive_some() == b""
            assert server.statistics().state is StreamState.HALF_CLOSED_REMOTE
            await server.send_eof()
            assert await client.receive_some() == b""
            assert client.statistics().state is StreamState.CLOSED
            assert server.statistics().state is StreamState.CLOSED


async def test_content_length_is_checked_by_the_engine() -> None:
    """h2 sees only empty DATA frames in place of ours, so the engine checks
    content-length itself: a body that matches passes, one that lies is reset (seen from
    the client: its handler, on the server, is cancelled, and may never hand it over)."""
    with trio.fail_after(10):
        async with h2_pair() as pair:
            honest = pair.client.start_request([*REQUEST, ("content-length", "5")])
            await honest.send_all(b"hello")
            await honest.send_eof()
            server = await pair.accepted.receive()
            assert await read_all(server) == b"hello"

            liar = pair.client.start_request([*REQUEST, ("content-length", "10")])
            await liar.send_all(b"short")
            await liar.send_eof()
            with pytest.raises(StreamReset) as caught:
                await liar.wait_response()
            assert caught.value.code == ErrorCodes.PROTOCOL_ERROR
            assert not pair.server.is_closed()  # a stream error, not a connection error


async def test_http2_inside_an_http2_stream() -> None:
    """The waypoint's case: a client's HTTP/2 arrives inside a CONNECT stream; the
    same engine runs over that stream (StreamTransport), with trailers and all."""

    async def inner_echo(stream: H2Stream) -> None:
        body = await read_all(stream)
        stream.send_headers([(":status", "200")])
        await stream.send_all(body.upper())
        await stream.send_trailers([("grpc-status", "0")])

    with trio.fail_after(10):
        async with h2_pair() as outer:
            tunnel_client = await outer.client.open_stream("10.0.0.2:80")
            tunnel_server = await outer.accepted.receive()
            inner_client = Http2Connection(
                StreamTransport(tunnel_client), peer=None, settings=SMALL_WINDOWS, client_side=True
            )
            inner_server = Http2Connection(
                StreamTransport(tunnel_server),
                peer=None,
                settings=SMALL_WINDOWS,
                handler=inner_echo,
                client_side=False,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(inner_client.serve)
                nursery.start_soon(inner_server.serve)
                for _ in range(3):  # several requests on the one inner connection
                    stream = inner_client.start_request(REQUEST)
                    await stream.send_all(b"x" * 200_000)  # beyond both windows
                    await stream.send_eof()
                    assert dict(await stream.wait_response())[":status"] == "200"
                    assert await read_all(stream) == b"X" * 200_000
                    assert stream.trailers == [("grpc-status", "0")]
                inner_client.close()
            assert inner_server.is_closed()


async def test_send_nowait_takes_what_the_window_allows_and_never_waits() -> None:
    window = SMALL_WINDOWS.stream_window
    with trio.fail_after(10):
        async with h2_pair() as pair:
            client = await pair.client.open_stream("10.0.0.2:80")
            server = await pair.accepted.receive()
            with trio.testing.assert_no_checkpoints():
                assert client.send_nowait(b"a" * 100) == 100
                assert client.send_nowait(b"b" * window) == window - 100  # the rest of it
                assert client.send_nowait(b"c") == 0  # the window is spent: nothing, no wait
            assert await server.receive_some(100) == b"a" * 100
            received = b""
            while len(received) < window - 100:
                received += await server.receive_some()
            assert received == b"b" * (window - 100)  # in order, nothing lost or repeated
            await trio.testing.wait_all_tasks_blocked()
            assert client.send_nowait(b"d") == 1  # the reader's credit came back
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                client.send_nowait(b"e")
