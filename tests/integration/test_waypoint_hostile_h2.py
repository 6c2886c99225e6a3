"""HTTP/2 clients at the waypoint meeting apps that misbehave: a HEAD answered with the
length of the GET, a response cut half-way. The h2c client must see the truth (an
answer without a body; a reset stream, never a clean END_STREAM on a truncated body),
and a healthy request beside it loses no byte. A client that stalls mid-upload to an
HTTP/1.1 app gets 408 after the stream idle timeout, and its connection goes on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from mesh.hbone import H2Stream, HboneSettings, Http2Connection
from mesh.hbone.transport import StreamTransport
from mesh.model import ServicePort
from tests.integration.hostile_support import beside_healthy, raw_app
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki

PREFACE_SETTINGS = HboneSettings()


async def misbehave(head: bytes, stream: trio.SocketStream) -> None:
    path = head.split(b" ")[1]
    if head.startswith(b"HEAD "):  # the length of the GET, no body: as RFC 9110 says
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        await trio.sleep(30)  # and the connection stays open
    elif path == b"/cut-length":
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
    elif path == b"/cut-chunked":
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n")
        await stream.send_all(b"x" * 10 + b"\r\n")
    elif path == b"/upload":  # waits for the whole body, which never comes
        await trio.sleep(30)
    else:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngenuine")
    await stream.aclose()


@contextlib.asynccontextmanager
async def h2_client(mesh: Mesh) -> AsyncIterator[Http2Connection]:
    """An h2c connection with prior knowledge inside one CONNECT to the waypoint."""
    tunnel = await mesh.connect()
    conn = Http2Connection(StreamTransport(tunnel), peer=None, settings=PREFACE_SETTINGS,
                           client_side=True)  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        yield conn
        conn.close()


async def read_to_end(stream: H2Stream) -> bytes:
    got = b""
    while data := await stream.receive_some():
        got += data
    return got


def request(conn: Http2Connection, method: str, path: str) -> H2Stream:
    headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "web")]
    return conn.start_request(headers, end_stream=True)


@pytest.fixture
async def mesh(root: Pki) -> AsyncIterator[Mesh]:
    pod = Pod("web-0", "10.0.0.11", app=False)
    async with trio.open_nursery() as nursery:
        pod.app_port = await nursery.start(raw_app, misbehave)
        async with open_mesh(root, [pod], ports=[ServicePort(80, 8080, name="http")]) as mesh:
            yield mesh
        nursery.cancel_scope.cancel()


async def test_head_to_an_http1_app_is_answered_without_waiting_for_a_body(mesh: Mesh) -> None:
    with trio.fail_after(10):
        async with beside_healthy(mesh), h2_client(mesh) as conn:
            stream = request(conn, "HEAD", "/thing")
            headers = dict(await stream.wait_response())
            assert headers[":status"] == "200"
            assert headers["content-length"] == "1234"
            assert await stream.receive_some() == b""  # no body, and at once


@pytest.mark.parametrize("path", ["/cut-length", "/cut-chunked"])
async def test_a_response_cut_by_the_app_is_a_reset_stream_for_the_client(
    mesh: Mesh, path: str
) -> None:
    with trio.fail_after(10):
        async with beside_healthy(mesh), h2_client(mesh) as conn:
            stream = request(conn, "GET", path)
            assert dict(await stream.wait_response())[":status"] == "200"
            with pytest.raises(trio.BrokenResourceError):
                await read_to_end(stream)


async def test_an_upload_to_an_http1_app_that_stalls_ends_with_408(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("waypoint.session.STREAM_IDLE_SECONDS", 0.5)
    with trio.fail_after(10):
        async with h2_client(mesh) as conn:
            headers = [(":method", "POST"), (":scheme", "http"), (":path", "/upload"),
                       (":authority", "web"), ("content-length", "100")]  # fmt: skip
            stream = conn.start_request(headers)
            await stream.send_all(b"x" * 10)  # then nothing: the client stalls mid-body
            assert dict(await stream.wait_response())[":status"] == "408"
            await mesh.requests_counted(response_code="408", response_flags="SI")
            again = request(conn, "GET", "/next")  # the connection goes on
            assert dict(await again.wait_response())[":status"] == "200"
            assert await read_to_end(again) == b"genuine"
