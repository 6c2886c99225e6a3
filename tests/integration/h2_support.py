"""Two HTTP/2 connections joined by ``trio.testing.memory_stream_pair`` (no sockets), and
an h2c app on our engine over loopback TCP (:func:`serve_h2c`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio
import trio.testing

from mesh.hbone import H2Stream, HboneSettings, Http2Connection
from mesh.hbone.connection import StreamHandler
from mesh.hbone.transport import StreamTransport
from mesh.identity import SpiffeId
from tests.conftest import CLIENT_ID

SMALL_WINDOWS = HboneSettings(stream_window=65_535, connection_window=256 * 1024)


@dataclass
class Pair:
    client: Http2Connection
    server: Http2Connection
    accepted: trio.MemoryReceiveChannel[H2Stream]


@contextlib.asynccontextmanager
async def h2_pair(
    settings: HboneSettings = SMALL_WINDOWS,
    handler: StreamHandler | None = None,
    *,
    client_identity: SpiffeId | None = CLIENT_ID,
) -> AsyncIterator[Pair]:
    """A client and a server connection over memory streams. Without ``handler``,
    each incoming stream is put on ``accepted`` (a CONNECT answered 200 first) and
    stays open until the test ends."""
    send, accepted = trio.open_memory_channel[H2Stream](100)

    async def hand_over(stream: H2Stream) -> None:
        if dict(stream.request_headers).get(":method") == "CONNECT":
            stream.send_headers([(":status", "200")])  # a tunnel: answered at once
        await send.send(stream)
        await trio.sleep_forever()  # the test owns the stream now

    left, right = trio.testing.memory_stream_pair()
    client = Http2Connection(StreamTransport(left), peer=None, settings=settings, client_side=True)
    server = Http2Connection(
        StreamTransport(right),
        peer=client_identity,  # as if mTLS had verified it
        settings=settings,
        handler=handler or hand_over,
        client_side=False,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.serve)
        nursery.start_soon(server.serve)
        yield Pair(client, server, accepted)
        nursery.cancel_scope.cancel()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some():
        out += data
    return bytes(out)


async def serve_h2c(handler: StreamHandler, *, task_status: trio.TaskStatus[int]) -> None:
    """An h2c server (prior knowledge) on a loopback port: each stream goes to ``handler``;
    ``task_status.started`` gets the port."""

    async def connection(tcp: trio.SocketStream) -> None:
        conn = Http2Connection(StreamTransport(tcp), peer=None, settings=HboneSettings(),
                               handler=handler, client_side=False)  # fmt: skip
        await conn.serve()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])
