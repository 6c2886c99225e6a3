"""HTTP/1.1 apps that misbehave behind the waypoint, with HTTP/1.1 clients: a 101 to a
request that asked for no upgrade is a bad answer (502), never passed down; an app that
sends more than its Content-Length leaves its connection unfit for another request, so
the next request never reads those bytes as its answer. A client that stalls mid-upload
gets 408 after the stream idle timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.integration.hostile_support import beside_healthy, raw_app
from tests.integration.waypoint_support import Client, Mesh, Pod, open_mesh
from tests.pki import Pki


async def misbehave(head: bytes, stream: trio.SocketStream) -> None:
    """Answer by path; then keep the connection as an app that wants keep-alive would."""
    path = head.split(b" ")[1]
    if path == b"/switch":
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n")
    elif path == b"/upload":  # waits for the whole body, which never comes
        await trio.sleep(5)
    elif path == b"/overlong":  # 5 bytes promised, a whole fake answer after them
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
                              b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged")  # fmt: skip
    else:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngenuine")
    await trio.sleep(5)


@pytest.fixture
async def mesh(root: Pki) -> AsyncIterator[Mesh]:
    pod = Pod("web-0", "10.0.0.11", app=False)
    async with trio.open_nursery() as nursery:
        pod.app_port = await nursery.start(raw_app, misbehave)
        async with open_mesh(root, [pod]) as found:
            yield found
        nursery.cancel_scope.cancel()


async def test_a_101_to_a_request_without_upgrade_is_502(mesh: Mesh) -> None:
    with trio.fail_after(10):
        async with beside_healthy(mesh):
            stream = await mesh.connect()
            async with stream:
                await stream.send_all(b"GET /switch HTTP/1.1\r\nHost: web\r\n\r\n")
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 502 "), answer  # no 101 passed down first
            await mesh.requests_counted(response_code="502", response_flags="UPE")


async def test_bytes_past_content_length_never_answer_the_next_request(mesh: Mesh) -> None:
    with trio.fail_after(10):
        client = Client(await mesh.connect())
        status, _headers, body = await client.request("GET", "/overlong")
        assert (status, body) == (200, b"hello")
        status, _headers, body = await client.request("GET", "/next")
        assert (status, body) == (200, b"genuine")  # not the app's forged leftover
        await client.stream.aclose()


async def test_an_http1_upload_that_stalls_ends_with_408_after_the_stream_idle_timeout(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("waypoint.session.STREAM_IDLE_SECONDS", 0.5)
    with trio.fail_after(10):
        stream = await mesh.connect()
        async with stream:
            await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: web\r\n"
                                  b"content-length: 100\r\n\r\n" + b"x" * 10)  # fmt: skip
            answer = b""
            while b"\r\n\r\n" not in answer:  # the client stalls; the waypoint answers
                answer += await stream.receive_some()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        await mesh.requests_counted(response_code="408", response_flags="SI")
