"""Our HTTP/2 client against an HTTP/2 stack that is neither ours nor python-hyper's:
Go's net/http (tests/peers/h2peer, standard library only, h2c on loopback), doing a
graceful ``Server.Shutdown`` and an abrupt ``Server.Close`` while CONNECT streams are
in flight. The peer is built with the machine's Go; the tests skip, saying so, where
there is no Go."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mesh.hbone import H2Stream, HboneSettings, Http2Connection
from mesh.hbone.settings import HboneRetryableError
from mesh.hbone.transport import StreamTransport
from tests.waiting import wait_until

PEER_SOURCE = Path(__file__).parent.parent / "peers" / "h2peer"
SETTINGS = HboneSettings(stream_window=65_535, connection_window=256 * 1024)


@pytest.fixture(scope="session")
def h2peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go 1.24 or later to build tests/peers/h2peer")
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in version.strip().removeprefix("go").split(".")[:2])
    if (major, minor) < (1, 24):
        pytest.skip(f"needs Go 1.24 or later to build tests/peers/h2peer (have {version.strip()})")
    binary = tmp_path_factory.mktemp("h2peer") / "h2peer"
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=PEER_SOURCE,
        check=True,
        timeout=300,
        env={**os.environ, "CGO_ENABLED": "0"},
    )
    return binary


@dataclass
class Peer:
    process: trio.Process
    stdin: trio.abc.SendStream
    lines: list[str]
    address: tuple[str, int]

    async def say(self, command: str) -> None:
        await self.stdin.send_all(command.encode() + b"\n")


@asynccontextmanager
async def go_server(binary: Path) -> AsyncIterator[Peer]:
    process = await trio.lowlevel.open_process(
        [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[str] = []
    try:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                buffer = b""
                while data := await stdout.receive_some():
                    buffer += data
                    *done, buffer = buffer.split(b"\n")
                    lines.extend(line.decode() for line in done)

            nursery.start_soon(read)
            await wait_until(lambda: lines)
            host, _, port = lines[0].removeprefix("listening ").rpartition(":")
            yield Peer(process, process.stdin, lines, (host, int(port)))
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        await process.wait()


@asynccontextmanager
async def client_to(address: tuple[str, int]) -> AsyncIterator[Http2Connection]:
    stream = await trio.open_tcp_stream(*address)
    conn = Http2Connection(StreamTransport(stream), peer=None, settings=SETTINGS, client_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        yield conn
        conn.close()


async def echo(stream: H2Stream, payload: bytes) -> bytes:
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)
        while len(got) < len(payload):
            got += await stream.receive_some()
    return bytes(got)


async def read_to_end(stream: H2Stream) -> None:
    while await stream.receive_some():
        pass


async def test_graceful_shutdown_lets_streams_in_flight_finish_both_ways(h2peer: Path) -> None:
    payload = os.urandom(300 * 1024)  # beyond both windows: WINDOW_UPDATEs after GOAWAY
    with trio.fail_after(30):
        async with go_server(h2peer) as peer, client_to(peer.address) as conn:
            streams = [await conn.open_stream("10.0.0.2:80") for _ in range(3)]
            for stream in streams:
                assert await echo(stream, b"before") == b"before"
            await peer.say("shutdown")
            await wait_until(lambda: conn.statistics().goaway.received_last_stream_id is not None)
            assert not conn.is_available()  # a pool stops choosing it
            with pytest.raises(HboneRetryableError):
                conn.start_request([(":method", "CONNECT"), (":authority", "10.0.0.2:80")])
            await conn.ping()  # PING still works after GOAWAY (h2 would raise)
            for stream in streams:  # every stream in flight runs to its end, both ways
                assert await echo(stream, payload) == payload
                await stream.send_eof()  # END_STREAM after GOAWAY still leaves
                assert await stream.receive_some() == b""
                await stream.aclose()
            await wait_until(lambda: conn.is_closed(), seconds=10)
            await wait_until(lambda: any(line.startswith("shutdown done") for line in peer.lines))
    assert "shutdown done <nil>" in peer.lines


async def test_goaway_then_immediate_close_fails_only_that_connection(h2peer: Path) -> None:
    with trio.fail_after(30):
        async with (
            go_server(h2peer) as peer,
            go_server(h2peer) as other,
            client_to(peer.address) as doomed,
            client_to(other.address) as healthy,
        ):
            cut = await doomed.open_stream("10.0.0.2:80")
            fine = await healthy.open_stream("10.0.0.2:80")
            assert await echo(cut, b"x") == b"x"
            await peer.say("close")
            with pytest.raises(trio.BrokenResourceError):
                await read_to_end(cut)  # cut, not ended cleanly
            await wait_until(lambda: doomed.is_closed())
            # The other connection, to another peer, is untouched.
            assert await echo(fine, b"still here") == b"still here"
            await fine.send_eof()
            assert await fine.receive_some() == b""


async def test_our_graceful_goaway_lets_gos_streams_finish(h2peer: Path) -> None:
    """Go's client streams four full-duplex requests; our server says a two-phase GOAWAY
    on its connections while they are in flight: each runs to its end, and Go sends its
    next request on a new connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    connections: list[Http2Connection] = []
    open_streams = 0

    async def echo_request(stream: H2Stream) -> None:
        nonlocal open_streams
        open_streams += 1
        stream.send_headers([(":status", "200")])
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()

    async def serve(tcp: trio.SocketStream) -> None:
        conn = Http2Connection(
            StreamTransport(tcp), peer=None, settings=SETTINGS, handler=echo_request,
            client_side=False,
        )  # fmt: skip
        connections.append(conn)
        await conn.serve()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve, listeners)
            client = await trio.lowlevel.open_process(
                [str(h2peer), "client", f"127.0.0.1:{port}", "4", "20"], stdout=subprocess.PIPE
            )
            assert client.stdout is not None
            await wait_until(lambda: open_streams == 4)  # all four in flight
            before = list(connections)
            async with trio.open_nursery() as goaways:
                for conn in before:
                    goaways.start_soon(conn.graceful_goaway)
            live = [c for c in before if c.statistics().streams]
            assert live, [c.statistics() for c in before]
            assert all(c.statistics().goaway.sent_last_stream_id is not None for c in live), [
                c.statistics() for c in before
            ]
            output = b""
            while data := await client.stdout.receive_some():
                output += data
            await client.wait()
            await wait_until(lambda: all(c.is_closed() for c in before))  # drained, closed
            nursery.cancel_scope.cancel()
    lines = sorted(output.decode().splitlines())
    assert lines == sorted(
        [*(f"stream {i} ok {20 * 32 * 1024}" for i in range(4)), "after ok after"]
    )
    assert len(connections) == len(before) + 1  # the next request came on a new connection
