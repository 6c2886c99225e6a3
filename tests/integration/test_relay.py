"""The relay as ztunnel uses it: app socket -> HBONE -> app socket, on loopback.

Client socket -> front relay (socket to HBONE stream) -> HBONE server -> back
relay (HBONE stream to socket, the direct-delivery path of ``send_to``) ->
app socket. What a user would see: bytes arrive exactly, half-close passes
both ways, a slow app holds the sender back instead of filling memory, and an
app that vanishes breaks only its own connection.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from mesh import sockio
from mesh.hbone import HboneRequest, HboneSettings, HboneStream, Http2Connection
from mesh.relay import RelayStats, relay
from tests.conftest import SERVER_ID
from tests.integration.hbone_support import client_pool, connect, start_server
from tests.pki import Pki
from tests.waiting import wait_until

App = Callable[[trio.SocketStream], Awaitable[None]]
SMALL_WINDOWS = HboneSettings(stream_window=65_535, connection_window=1024 * 1024)


@dataclass
class Chain:
    address: tuple[str, int]  # where a client connects
    front: list[RelayStats] = field(default_factory=list)  # relay(client, hbone)
    back: list[RelayStats] = field(default_factory=list)  # relay(hbone, app)
    back_streams: list[HboneStream] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@asynccontextmanager
async def relay_chain(
    pki: Pki, app: App, settings: HboneSettings | None = None, *, app_buffer: int | None = None
) -> AsyncIterator[Chain]:
    """``app_buffer``: small socket buffers toward the app, so writes to it wait."""
    async with trio.open_nursery() as nursery:
        (app_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        if app_buffer is not None:
            app_listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, app_buffer)
        app_port = app_listener.socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, app, [app_listener])
        chain = Chain(("127.0.0.1", 0))

        async def back(request: HboneRequest) -> None:
            upstream = await trio.open_tcp_stream("127.0.0.1", app_port)
            if app_buffer is not None:
                upstream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, app_buffer)
            stream = await request.accept()
            chain.back_streams.append(stream)
            stats = RelayStats()
            chain.back.append(stats)
            async with upstream, stream:
                try:
                    await relay(stream, upstream, stats)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    chain.errors.append(f"back: {exc}")

        hbone_address = await start_server(nursery, back, pki.issue(SERVER_ID), settings)
        async with client_pool(pki, settings) as pool:

            async def front(client: trio.SocketStream) -> None:
                stats = RelayStats()
                chain.front.append(stats)
                async with client, await connect(pool, hbone_address) as stream:
                    try:
                        await relay(client, stream, stats)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        chain.errors.append(f"front: {exc}")

            (front_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
            chain.address = ("127.0.0.1", front_listener.socket.getsockname()[1])
            nursery.start_soon(trio.serve_listeners, front, [front_listener])
            yield chain
            nursery.cancel_scope.cancel()


async def hash_then_answer(app: trio.SocketStream) -> None:
    """Hash what arrives until EOF; answer with the hash, then 8 MiB of its own."""
    async with app:
        digest = hashlib.sha256()
        total = 0
        while data := await app.receive_some(256 * 1024):
            digest.update(data)
            total += len(data)
        await app.send_all(f"{digest.hexdigest()} {total}\n".encode())
        await app.send_all(random.Random(7).randbytes(8 * 1024 * 1024))


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(256 * 1024):
        out += data
    return bytes(out)


async def test_bytes_arrive_exactly_both_ways_and_half_close_passes(root: Pki) -> None:
    size = 32 * 1024 * 1024
    rng = random.Random(3)
    block = rng.randbytes(1024 * 1024)
    expected = hashlib.sha256()
    with trio.fail_after(60):
        async with relay_chain(root, hash_then_answer) as chain:
            client = await trio.open_tcp_stream(*chain.address)
            async with client:
                sent = 0
                while sent < size:  # varied chunk sizes, so framing bugs cannot hide
                    n = min(rng.randint(1, len(block)), size - sent)
                    chunk = block[:n]
                    expected.update(chunk)
                    await client.send_all(chunk)
                    sent += n
                await client.send_eof()  # the app only answers once it sees EOF
                answer = await read_to_eof(client)
    head, _, rest = answer.partition(b"\n")
    assert head.decode() == f"{expected.hexdigest()} {size}"
    assert rest == random.Random(7).randbytes(8 * 1024 * 1024)
    back_bytes = len(answer)
    assert (chain.front[0].sent, chain.front[0].received) == (size, back_bytes)
    assert (chain.back[0].sent, chain.back[0].received) == (size, back_bytes)
    assert chain.errors == []


async def test_a_slow_app_holds_the_sender_back(root: Pki) -> None:
    """An app that does not read stops the client at the windows and socket buffers;
    the tunnel buffers no more than one stream window."""
    release = trio.Event()

    async def stalled(app: trio.SocketStream) -> None:
        await release.wait()
        await hash_then_answer(app)

    total = 64 * 1024 * 1024
    payload = random.Random(5).randbytes(total)
    with trio.fail_after(60):
        async with relay_chain(root, stalled, SMALL_WINDOWS) as chain:
            client = await trio.open_tcp_stream(*chain.address)
            sock = client.socket
            accepted = 0
            with trio.move_on_after(1.5):
                while accepted < total:
                    await sock.wait_writable()
                    accepted += sockio.send_nowait(sock, payload[accepted : accepted + 65536])
            assert accepted < total // 2, f"{accepted} bytes accepted though the app reads nothing"
            assert chain.back_streams[0].statistics().buffered <= SMALL_WINDOWS.stream_window
            release.set()
            async with client:
                await client.send_all(payload[accepted:])
                await client.send_eof()
                answer = await read_to_eof(client)
    assert answer.split(b"\n")[0].decode() == f"{hashlib.sha256(payload).hexdigest()} {total}"


async def test_an_app_that_vanishes_breaks_only_its_own_connection(root: Pki) -> None:
    async def app(conn: trio.SocketStream) -> None:
        first = await conn.receive_some(1)
        if first == b"v":  # vanish: reset the connection mid-stream
            conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            await conn.aclose()
            return
        await hash_then_answer_rest(conn, first)

    async def hash_then_answer_rest(conn: trio.SocketStream, first: bytes) -> None:
        digest = hashlib.sha256(first)
        total = len(first)
        async with conn:
            while data := await conn.receive_some(256 * 1024):
                digest.update(data)
                total += len(data)
            await conn.send_all(f"{digest.hexdigest()} {total}".encode())

    payload = random.Random(9).randbytes(4 * 1024 * 1024)
    with trio.fail_after(60):
        async with relay_chain(root, app) as chain:
            healthy = await trio.open_tcp_stream(*chain.address)
            await healthy.send_all(payload[: len(payload) // 2])
            doomed = await trio.open_tcp_stream(*chain.address)
            async with doomed:
                await doomed.send_all(b"v" + b"x" * 65536)
                assert await read_to_eof(doomed) == b""  # its client sees the end
            async with healthy:
                await healthy.send_all(payload[len(payload) // 2 :])
                await healthy.send_eof()
                answer = await read_to_eof(healthy)
            # both rode one HBONE connection
            assert chain.back_streams[0].connection is chain.back_streams[1].connection
    assert answer.decode() == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}"


async def test_apps_that_reset_while_bytes_wait_for_them_give_all_credit_back(
    root: Pki,
) -> None:
    """An app that resets its connection while the tunnel still waits to write to it
    cancels the relay with a chunk in hand: that chunk's connection credit must come
    back, or after a few such apps (iperf3 resets its streams at the end of a test) the
    connection window is gone and every stream on the connection stops."""
    settings = HboneSettings(stream_window=65_535, connection_window=256 * 1024)
    size = 256 * 1024
    served: list[int] = []

    async def resets_without_reading(app: trio.SocketStream) -> None:
        await trio.sleep(0.02)  # the tunnel fills the small socket buffers and waits
        app.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        await app.aclose()
        served.append(1)

    with trio.fail_after(60):
        async with relay_chain(root, resets_without_reading, settings, app_buffer=4096) as chain:
            for i in range(30):
                client = await trio.open_tcp_stream(*chain.address)
                async with client:
                    with trio.move_on_after(5):  # the reset may cut the client off early
                        try:
                            await client.send_all(b"c" * size)
                            await read_to_eof(client)
                        except trio.BrokenResourceError:
                            pass
                await wait_until(lambda i=i: len(served) == i + 1)  # type: ignore[misc]
            (server_side,) = {s.connection for s in chain.back_streams}
            assert isinstance(server_side, Http2Connection)
            await wait_until(lambda: server_side.statistics().streams == 0)
            window = server_side.statistics().receive_window
            credit = window.available + window.unacked
    assert len(chain.back_streams) == 30  # every client got through: nothing starved
    # The race really happened: each app reset while the tunnel still held bytes for it.
    delivered = [s.statistics().delivered for s in chain.back_streams]
    assert all(d < size for d in delivered), delivered
    assert credit == settings.connection_window


async def test_the_first_direction_to_end_is_reported_once_and_the_other_goes_on() -> None:
    """Sockets both sides, as ztunnel's plaintext path: one side's FIN is passed on and
    reported (the relay is half-closed), the other direction still carries the reply."""
    half_closes: list[str] = []
    with trio.fail_after(10):
        client, front = trio.socket.socketpair()
        back, app = trio.socket.socketpair()
        a, b = trio.SocketStream(front), trio.SocketStream(back)
        client_end, app_end = trio.SocketStream(client), trio.SocketStream(app)
        async with a, b, client_end, app_end, trio.open_nursery() as nursery:
            done = trio.Event()

            async def run_relay() -> None:
                await relay(a, b, on_half_close=lambda: half_closes.append("half-closed"))
                done.set()

            nursery.start_soon(run_relay)
            await client_end.send_all(b"request")
            await client_end.send_eof()
            assert await read_to_eof(app_end) == b"request"
            await wait_until(lambda: half_closes)
            await app_end.send_all(b"reply")  # the other direction goes on
            await app_end.send_eof()
            assert await read_to_eof(client_end) == b"reply"
            await done.wait()
    assert half_closes == ["half-closed"]
