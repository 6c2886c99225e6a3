"""mesh.net.serve_listeners on loopback: one connection whose handler fails is logged
and closed alone; capacity errors of accept back off and log once; handlers live in
the caller's nursery, so accepting can stop while accepted streams finish."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from functools import partial

import pytest
import trio
from structlog.testing import capture_logs

from mesh.net import open_listener, serve_listeners

PAYLOAD = os.urandom(256 * 1024)


async def _echo_or_explode(stream: trio.SocketStream) -> None:
    first = await stream.receive_some(1)
    if first == b"!":
        raise ValueError("this handler has a bug")
    await stream.send_all(first)
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def _exchange(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = bytearray()
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        nursery.start_soon(send)
        while data := await stream.receive_some():
            got += data
    return bytes(got)


async def _first_answer(port: int, payload: bytes) -> bytes:
    """The first bytes the server answers; b"" when it closes or resets instead."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        try:
            await stream.send_all(payload)
            return await stream.receive_some()
        except trio.BrokenResourceError:
            return b""


async def test_a_failing_handler_closes_only_its_connection() -> None:
    listener = await open_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    results: dict[int, bytes] = {}
    with trio.fail_after(30), capture_logs() as logs:
        async with trio.open_nursery() as handlers:
            await handlers.start(
                partial(
                    serve_listeners, _echo_or_explode, [listener], handler_nursery=handlers,
                    name="test",
                )
            )  # fmt: skip

            async def client(i: int) -> None:
                results[i] = await _exchange(port, b"x" + PAYLOAD)

            async with trio.open_nursery() as clients:
                for i in range(50):
                    clients.start_soon(client, i)
                # The bad one, among the 50 in flight: it gets closed, nothing more.
                assert await _first_answer(port, b"!boom") == b""
            # The listener still accepts after the failure.
            assert await _exchange(port, b"after") == b"after"
            handlers.cancel_scope.cancel()
    digest = hashlib.sha256(b"x" + PAYLOAD).hexdigest()
    assert len(results) == 50
    assert {hashlib.sha256(r).hexdigest() for r in results.values()} == {digest}
    failures = [e for e in logs if e["event"] == "connection_failed"]
    assert len(failures) == 1
    [failure] = failures
    assert failure["reason"] == "internal_error"
    assert failure["listener"] == "test"
    assert "this handler has a bug" in failure["error"]
    assert failure["src"].startswith("127.0.0.1:")
    assert failure["exc_info"] is True  # a bug is logged with its traceback


async def test_accepting_stops_while_accepted_streams_finish() -> None:
    listener = await open_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    release = trio.Event()

    async def slow(stream: trio.SocketStream) -> None:
        await release.wait()
        await stream.send_all(b"finished")

    with trio.fail_after(10):
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as accepting:
                await accepting.start(
                    partial(serve_listeners, slow, [listener], handler_nursery=handlers, name="t")
                )
                client = await trio.open_tcp_stream("127.0.0.1", port)
                await trio.testing.wait_all_tasks_blocked()
                accepting.cancel_scope.cancel()  # stop accepting: the listener closes
            with pytest.raises(OSError, match="all attempts to connect"):
                await trio.open_tcp_stream("127.0.0.1", port)
            release.set()
            async with client:
                assert await client.receive_some() == b"finished"


# Holds fds open in a child process, so the test process's own limit stays the only one
# that bites.
_CLIENTS = """
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
print("connected", flush=True)
sys.stdin.readline()
"""
CLIENTS = 12


async def test_fd_exhaustion_backs_off_logs_once_and_recovers() -> None:
    listener = await open_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    accepted: list[trio.SocketStream] = []
    all_in = trio.Event()
    done = trio.Event()

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        if len(accepted) == CLIENTS:
            all_in.set()
        await done.wait()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(30), capture_logs() as logs:
        async with trio.open_nursery() as handlers:
            await handlers.start(
                partial(serve_listeners, hold, [listener], handler_nursery=handlers, name="t")
            )
            child = await trio.lowlevel.open_process(
                [sys.executable, "-c", _CLIENTS, str(port), str(CLIENTS)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert child.stdin is not None
            assert child.stdout is not None
            try:
                # Room for 5 more fds: the 6th accept meets EMFILE.
                resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 5, hard))
                try:
                    await child.stdout.receive_some()  # every connection is in the backlog
                    await trio.sleep(0.5)  # accept keeps failing meanwhile
                    assert len(accepted) < CLIENTS
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                await all_in.wait()  # the limit is back: the rest are accepted
                await child.stdin.send_all(b"bye\n")
                await child.wait()
            finally:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
                await child.stdin.aclose()
                await child.stdout.aclose()
            done.set()
            handlers.cancel_scope.cancel()
        for stream in accepted:
            await stream.aclose()
    events = [e["event"] for e in logs]
    assert events.count("accept_capacity_exhausted") == 1  # once per burst, not per retry
    assert events.count("accept_capacity_recovered") == 1
    [exhausted] = [e for e in logs if e["event"] == "accept_capacity_exhausted"]
    assert exhausted["reason"] == os.strerror(24)  # EMFILE
