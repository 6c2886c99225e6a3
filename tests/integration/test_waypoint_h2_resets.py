"""Resets crossing the waypoint between an h2c client and an h2c app (a port declared
``http2``): an app that resets its answer half-way is a reset for the client, never a
clean END_STREAM on a truncated body; a client that resets its request makes the app's
stream reset too (CANCEL), so the app stops working for nobody and its stream slot is
freed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from h2.errors import ErrorCodes

from mesh.hbone import H2Stream
from mesh.hbone.stream import StreamReset
from mesh.model import ServicePort
from tests.integration.h2_support import serve_h2c
from tests.integration.test_waypoint_hostile_h2 import h2_client, read_to_end, request
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki


class App:
    """An h2c app on our engine: ``/cut`` answers 200 and 1 KiB, then resets; ``/upload``
    answers 200 once the body ended; ``/hang``
    never answers and records the reset of its stream, whose request body was still coming."""

    def __init__(self) -> None:
        self.hanging = trio.Event()
        self.reset_seen: list[int] = []
        self.reset = trio.Event()

    async def handle(self, stream: H2Stream) -> None:
        path = dict(stream.request_headers).get(":path")
        if path == "/cut":
            stream.send_headers([(":status", "200")])
            await stream.send_all(b"x" * 1024)
            stream.connection.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
            return
        if path == "/upload":  # reads the body to its end, then answers
            while await stream.receive_some():
                pass
            stream.send_headers([(":status", "200")], end_stream=True)
            return
        self.hanging.set()
        try:
            await trio.sleep_forever()  # a stream reset before its answer cancels its handler
        finally:
            with trio.CancelScope(shield=True):
                try:
                    while await stream.receive_some():  # what came before the reset, first
                        pass
                except trio.BrokenResourceError as exc:
                    cause = exc.__cause__
                    self.reset_seen.append(cause.code if isinstance(cause, StreamReset) else -1)
                self.reset.set()


@pytest.fixture
async def app() -> AsyncIterator[tuple[App, int]]:
    found = App()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_h2c, found.handle)
        yield found, port
        nursery.cancel_scope.cancel()


@pytest.fixture
async def mesh(root: Pki, app: tuple[App, int]) -> AsyncIterator[Mesh]:
    pods = [Pod("web-0", "10.0.0.11", app=False, app_port=app[1])]
    async with open_mesh(root, pods, ports=[ServicePort(80, 8080, name="http2")]) as found:
        yield found


async def test_an_answer_the_app_resets_is_a_reset_for_the_client(mesh: Mesh) -> None:
    with trio.fail_after(10):
        async with h2_client(mesh) as conn:
            stream = request(conn, "GET", "/cut")
            assert dict(await stream.wait_response())[":status"] == "200"
            with pytest.raises(trio.BrokenResourceError):
                await read_to_end(stream)
            again = request(conn, "GET", "/cut")  # the connection goes on
            assert dict(await again.wait_response())[":status"] == "200"


async def test_a_request_the_client_resets_is_cancelled_at_the_app(
    mesh: Mesh, app: tuple[App, int]
) -> None:
    found, _port = app
    with trio.fail_after(10):
        async with h2_client(mesh) as conn:
            headers = [(":method", "POST"), (":scheme", "http"), (":path", "/hang"),
                       (":authority", "web")]  # fmt: skip
            stream = conn.start_request(headers)  # its body is still to come
            await found.hanging.wait()
            await stream.aclose()  # RST_STREAM CANCEL: the client gave up
            await found.reset.wait()
            await mesh.requests_counted(response_flags="DC")
    assert found.reset_seen == [ErrorCodes.CANCEL]


async def test_an_upload_that_stalls_ends_with_408_after_the_stream_idle_timeout(
    mesh: Mesh, app: tuple[App, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("waypoint.session.STREAM_IDLE_SECONDS", 0.5)
    found, _port = app
    with trio.fail_after(10):
        async with h2_client(mesh) as conn:
            headers = [(":method", "POST"), (":scheme", "http"), (":path", "/hang"),
                       (":authority", "web")]  # fmt: skip
            stream = conn.start_request(headers)
            await stream.send_all(b"x" * 10)  # then nothing: the client stalls mid-body
            await found.hanging.wait()
            answer = dict(await stream.wait_response())
            assert answer[":status"] == "408"
            await found.reset.wait()  # the app's stream ended too
            await mesh.requests_counted(response_flags="SI", response_code="408")
            upload = [(":method", "POST"), (":scheme", "http"), (":path", "/upload"),
                      (":authority", "web")]  # fmt: skip
            again = conn.start_request(upload)  # an upload that keeps moving is not cut
            for _ in range(8):
                await again.send_all(b"y")
                await trio.sleep(0.1)
            await again.send_eof()
            assert dict(await again.wait_response())[":status"] == "200"
    assert found.reset_seen[0] == ErrorCodes.CANCEL
