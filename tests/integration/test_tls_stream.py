"""Our TLS stream over real sockets: a flush cancelled half-way loses and repeats nothing."""

from __future__ import annotations

import hashlib
import os
import socket

import trio

from mesh.tls import TlsStream, client_context, server_context
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.pki import Pki


async def test_a_cancelled_flush_resumes_without_tearing_the_record_stream(root: Pki) -> None:
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # the peer's window fills fast
    client = TlsStream(a, client_context(root.issue(CLIENT_ID)), server_side=False)
    server = TlsStream(b, server_context(root.issue(SERVER_ID)), server_side=True)
    payload = os.urandom(4 * 1024 * 1024)
    received = hashlib.sha256()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.handshake)
            await server.handshake()
        client.write(payload)
        with trio.move_on_after(0.2) as scope:
            await client.flush()  # nobody reads: it sends part, then waits, then is cancelled
        assert scope.cancelled_caught
        assert client.has_output()

        async def read_all() -> None:
            buf = memoryview(bytearray(256 * 1024))
            got = 0
            while got < len(payload):
                n = await server.receive_into(buf)  # a repeated byte would fail the MAC here
                assert n, "end of stream before the whole payload"
                received.update(buf[:n])
                got += n

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await client.flush()
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
    await client.aclose()
    await server.aclose()
