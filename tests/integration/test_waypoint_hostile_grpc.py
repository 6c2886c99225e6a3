"""gRPC at the waypoint against apps and clients that break its shape: messages whose
length prefix lies, answers without ``grpc-status`` (or with nonsense in it), an answer
head that is malformed or a stream reset before any answer, a client that cancels a
streaming call half-way (the app must see its call cancelled), and one call with a great
many small messages. The waypoint relays what it can, counts what it saw, never hangs,
and logs one access-log line per call and nothing else."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import trio
from h2.errors import ErrorCodes
from structlog.testing import capture_logs

from mesh.hbone import H2Stream
from mesh.model import ServicePort
from tests.integration.h2_raw_support import Headers, raw_h2
from tests.integration.h2_support import read_all, serve_h2c
from tests.integration.hostile_support import not_access_log
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki
from tests.waiting import wait_until

GRPC = [ServicePort(80, 8080, name="grpc")]
GRPC_HEAD = [(":status", "200"), ("content-type", "application/grpc")]
OK = [("grpc-status", "0")]
# What the h2c app answers on each path: (head, body, trailers); None: no trailers.
ANSWERS: dict[str, tuple[Headers, bytes, Headers | None]] = {
    "/bad.Svc/Huge": (GRPC_HEAD, b"\x00\xff\xff\xff\xffabc", OK),  # says 4 GiB, sends 3
    "/bad.Svc/Partial": (GRPC_HEAD, b"\x00\x00\x00", OK),  # 3 bytes of a 5-byte prefix
    "/bad.Svc/Flag": (GRPC_HEAD, b"\xff\x00\x00\x00\x02ok", OK),  # a flag gRPC never sets
    "/bad.Svc/NoStatus": (GRPC_HEAD, b"\x00\x00\x00\x00\x02ok", None),  # END_STREAM on DATA
    "/bad.Svc/NoStatusTrailers": (GRPC_HEAD, b"\x00\x00\x00\x00\x02ok", [("x-a", "1")]),
    "/bad.Svc/TrailersOnly": (GRPC_HEAD, b"", None),  # no grpc-status anywhere
    "/bad.Svc/Garbage": (GRPC_HEAD, b"\x00\x00\x00\x00\x02ok", [("grpc-status", "x" * 200)]),
}  # fmt: skip


def call(path: str) -> Headers:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "web"),
            ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip


async def bad_app(stream: H2Stream) -> None:
    path = dict(stream.request_headers)[":path"]
    await read_all(stream)
    if path == "/bad.Svc/ResetFirst":  # no answer at all
        stream.connection.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
        return
    if path == "/bad.Svc/BadLength":  # "²" is a digit to str.isdigit, not to int()
        stream.send_headers([*GRPC_HEAD, ("content-length", "\u00b2")])
        await stream.send_all(b"\x00\x00\x00\x00\x02ok")
        await stream.send_eof()
        return
    head, body, trailers = ANSWERS[path]
    if not body and trailers is None:
        stream.send_headers(head, end_stream=True)
        return
    stream.send_headers(head)
    await stream.send_all(body)
    if trailers is None:
        await stream.send_eof()
    else:
        await stream.send_trailers(trailers)


@pytest.fixture
async def mesh(root: Pki) -> AsyncIterator[Mesh]:
    pod = Pod("web-0", "10.0.0.11", app=False)
    async with trio.open_nursery() as nursery:
        pod.app_port = await nursery.start(serve_h2c, bad_app)
        async with open_mesh(root, [pod], ports=GRPC) as found:
            yield found
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", sorted(ANSWERS))
async def test_a_malformed_grpc_answer_is_relayed_as_is_and_counted(mesh: Mesh, path: str) -> None:
    _head, body, trailers = ANSWERS[path]
    with trio.fail_after(10), capture_logs() as logs:
        async with raw_h2(mesh) as h2:
            answer = await h2.request(1, call(path), b"\x00\x00\x00\x00\x02hi")
            assert answer.status == 200
            assert answer.reset is None
            assert bytes(answer.body) == body
            assert answer.trailers == [t for t in trailers or [] if t[0] != "content-length"]
            status = dict(trailers or []).get("grpc-status", "")
            label = status if status in ("", "0") else "2"  # nonsense is UNKNOWN
            await wait_until(lambda: mesh.metric("istio_requests_total") == 1)
            assert mesh.metric("istio_requests_total", request_protocol="grpc",
                               response_code="200", grpc_response_status=label) == 1  # fmt: skip
            assert mesh.metric("istio_request_messages_total") == 1
            again = await h2.request(3, call("/bad.Svc/Flag"), b"")  # the connection goes on
            assert again.ended
    assert not_access_log(logs) == []


@pytest.mark.parametrize("path", ["/bad.Svc/ResetFirst", "/bad.Svc/BadLength"])
async def test_an_app_that_breaks_before_answering_is_unavailable_for_the_caller(
    mesh: Mesh, path: str
) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        async with raw_h2(mesh) as h2:
            answer = await h2.request(1, call(path), b"")
            assert answer.status == 200  # gRPC-shaped: trailers-only
            assert dict(answer.headers)["grpc-status"] == "14"  # UNAVAILABLE
            again = await h2.request(3, call("/bad.Svc/Flag"), b"")
            assert again.status == 200
    assert not_access_log(logs) == []


# ---- grpcio on both ends --------------------------------------------------------------


class Hostile:
    """A grpcio app: ``Echo`` answers each message of a stream (and says how the call
    ended), ``Count`` counts the messages of a client stream."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.ended = threading.Event()

    def echo(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        terminated = threading.Event()
        context.add_callback(terminated.set)  # at the RPC's end: while we run, a cancel
        cancelled = False
        try:
            yield from requests  # a cancel ends this with RpcError, or (a race in grpcio) not
            cancelled = terminated.wait(2)
        except grpc.RpcError:
            cancelled = True
            raise
        finally:
            self.outcomes.append("cancelled" if cancelled else "ended")
            self.ended.set()

    def count(self, requests: Iterator[bytes], context: Any) -> bytes:
        return str(sum(1 for _ in requests)).encode()

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("test.Hostile", {
            "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
            "Count": grpc.stream_unary_rpc_method_handler(self.count),
        })  # fmt: skip


@contextlib.asynccontextmanager
async def grpcio_mesh(root: Pki) -> AsyncIterator[tuple[Mesh, grpc.Channel, Hostile]]:
    app = Hostile()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((app.handlers(),))
    pod = Pod("web-0", "10.0.0.11", app=False)
    pod.app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        async with open_mesh(root, [pod], ports=GRPC) as mesh, trio.open_nursery() as nursery:
            port = await nursery.start(mesh.source_ztunnel)
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            try:
                yield mesh, channel, app
            finally:
                channel.close()
                nursery.cancel_scope.cancel()
    finally:
        server.stop(grace=None)


def echo_two_then_cancel(channel: grpc.Channel) -> list[bytes]:
    requests: queue.Queue[bytes | None] = queue.Queue()

    def stream() -> Iterator[bytes]:
        while (item := requests.get()) is not None:
            yield item

    call = channel.stream_stream("/test.Hostile/Echo")(stream(), timeout=20)
    got = []
    for message in (b"a", b"b"):
        requests.put(message)
        got.append(next(call))
    call.cancel()  # RST_STREAM CANCEL; the app is waiting for a third message
    requests.put(None)
    return got


async def test_a_call_cancelled_half_way_is_cancelled_at_the_app(root: Pki) -> None:
    with trio.fail_after(30):
        async with grpcio_mesh(root) as (mesh, channel, app):
            got = await trio.to_thread.run_sync(echo_two_then_cancel, channel)
            assert got == [b"a", b"b"]
            assert await trio.to_thread.run_sync(app.ended.wait, 10)
            assert app.outcomes == ["cancelled"]
            await mesh.requests_counted(request_protocol="grpc", response_flags="DC")


async def test_a_call_with_many_small_messages_arrives_whole(root: Pki) -> None:
    n = 20_000
    with trio.fail_after(60):
        async with grpcio_mesh(root) as (mesh, channel, _app):
            count = channel.stream_unary("/test.Hostile/Count")
            answer = await trio.to_thread.run_sync(
                lambda: count(iter([b"m%d" % i for i in range(n)]), timeout=50)
            )
            assert answer == str(n).encode()
            await mesh.requests_counted(request_protocol="grpc", grpc_response_status="0")
            assert mesh.metric("istio_request_messages_total") == n
            assert mesh.metric("istio_response_messages_total") == 1
