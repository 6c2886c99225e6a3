"""gRPC through the waypoint with grpcio on both ends (h2c inside the tunnels): unary,
server streaming and bidirectional calls, status codes and trailers, per-call balancing,
a gRPC-shaped answer when no endpoint is there, and gRPC request metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import trio

from mesh.model import MeshSnapshot, ServicePort
from tests.integration.waypoint_support import Pod, open_mesh, web_snapshot
from tests.pki import Pki
from tests.waiting import wait_until

GRPC_PORTS = [ServicePort(80, 8080, name="grpc")]


def _handlers(name: str) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: Any) -> bytes:
        return name.encode() + b":" + request

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(5):
            yield b"%s:%d" % (request, i)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for request in requests:
            yield request.upper()

    def fail(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("abort raises")

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


@contextlib.contextmanager
def grpc_apps(pods: list[Pod], handler: grpc.GenericRpcHandler | None = None) -> Iterator[None]:
    """A grpcio server per pod (plaintext HTTP/2, as an app behind ztunnel)."""
    servers = []
    try:
        for pod in pods:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            server.add_generic_rpc_handlers((handler or _handlers(pod.name),))
            pod.app_port = server.add_insecure_port("127.0.0.1:0")
            pod.app = False
            server.start()
            servers.append(server)
        yield
    finally:
        for server in servers:
            server.stop(grace=None)


@contextlib.asynccontextmanager
async def grpc_mesh(
    root: Pki, n: int = 2, *, handler: grpc.GenericRpcHandler | None = None,
    snapshot: Callable[[list[Pod]], MeshSnapshot] | None = None,
) -> Any:  # fmt: skip
    """``n`` pods with a grpcio app each (``handler``, else the echo service) behind the
    waypoint (``snapshot`` of the pods, else theirs with a ``grpc`` port), and a channel
    to it through a source port."""
    pods = [Pod(f"web-{i}", f"10.0.0.{11 + i}") for i in range(n)]
    with grpc_apps(pods, handler):
        snap = snapshot(pods) if snapshot is not None else None
        mesh_cm = open_mesh(root, pods, ports=GRPC_PORTS, snapshot=snap)
        async with mesh_cm as mesh, trio.open_nursery() as nursery:
            port = await nursery.start(mesh.source_ztunnel)
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            try:
                yield mesh, channel
            finally:
                channel.close()
                nursery.cancel_scope.cancel()


async def call(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, timeout=10))


async def test_unary_streaming_and_bidi_calls_cross_the_waypoint(root: Pki) -> None:
    with trio.fail_after(30):
        async with grpc_mesh(root) as (mesh, channel):
            unary = channel.unary_unary("/test.Echo/Unary")
            answers = {(await call(unary, b"hi")).split(b":")[0] for _ in range(12)}
            assert answers == {b"web-0", b"web-1"}  # one channel, balanced per call
            stream = channel.unary_stream("/test.Echo/ServerStream")
            got = await trio.to_thread.run_sync(lambda: list(stream(b"s", timeout=10)))
            assert got == [b"s:0", b"s:1", b"s:2", b"s:3", b"s:4"]
            bidi = channel.stream_stream("/test.Echo/Bidi")
            got = await trio.to_thread.run_sync(
                lambda: list(bidi(iter([b"a", b"b", b"c"]), timeout=10))
            )
            assert got == [b"A", b"B", b"C"]
            grpc_ok = {"reporter": "waypoint", "request_protocol": "grpc",
                       "grpc_response_status": "0"}  # fmt: skip
            await wait_until(lambda: mesh.metric("istio_requests_total", **grpc_ok) == 14)
            # 12 unary calls (1 each way), a server stream (1 in, 5 out), bidi (3 and 3).
            assert mesh.metric("istio_request_messages_total", **grpc_ok) == 12 + 1 + 3
            assert mesh.metric("istio_response_messages_total", **grpc_ok) == 12 + 5 + 3


async def test_a_grpc_status_and_its_message_reach_the_client(root: Pki) -> None:
    with trio.fail_after(30):
        async with grpc_mesh(root, 1) as (mesh, channel):
            fail = channel.unary_unary("/test.Echo/Fail")
            with pytest.raises(grpc.RpcError) as caught:
                await call(fail, b"x")
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == "no such thing"
            await mesh.requests_counted(grpc_response_status="5", request_protocol="grpc")


async def test_no_endpoint_is_unavailable_in_grpcs_words(root: Pki) -> None:
    with trio.fail_after(30):
        async with grpc_mesh(root, 1) as (mesh, channel):
            mesh.set_snapshot(web_snapshot([], ports=GRPC_PORTS))
            unary = channel.unary_unary("/test.Echo/Unary")
            with pytest.raises(grpc.RpcError) as caught:
                await call(unary, b"x")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == "no healthy upstream"
            await mesh.requests_counted(response_flags="UH", grpc_response_status="14")
            mesh.set_snapshot(web_snapshot(mesh.pods, ports=GRPC_PORTS))
            assert await call(unary, b"y") == b"web-0:y"  # the same channel goes on
