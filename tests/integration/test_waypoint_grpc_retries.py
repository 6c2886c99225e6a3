"""A GRPCRoute rule's ``retry`` on gRPC status, grpcio on both ends through the waypoint:
a call answered UNAVAILABLE (trailers-only, as grpcio sends an abort) goes again, its
message sent again from the waypoint's copy, and the client sees the OK; a status not
in the codes, or a message past the 64 KiB copy, comes back as it was."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import grpc
import pytest
import trio

from mesh.model import MeshSnapshot
from mesh.model_l7 import BackendRef, GrpcRetry, GrpcRoute, GrpcRule, ParentRef
from tests.integration.test_waypoint_grpc import GRPC_PORTS, call, grpc_mesh
from tests.integration.waypoint_support import Pod, web_snapshot
from tests.pki import Pki


class Flaky:
    """Answers UNAVAILABLE to the first N calls carrying the message ``N:key``, then
    echoes the message's length; ``fail:`` messages are NOT_FOUND always."""

    def __init__(self) -> None:
        self.seen: Counter[bytes] = Counter()
        self.lock = threading.Lock()

    def unary(self, request: bytes, context: Any) -> bytes:
        head = request[:64]
        with self.lock:
            self.seen[head] += 1
            count = self.seen[head]
        if head.startswith(b"fail:"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        failures = int(head.split(b":", 1)[0]) if head[:1].isdigit() else 0
        if count <= failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return b"%d" % len(request)


def routed(pods: list[Pod]) -> MeshSnapshot:
    base = web_snapshot(pods, ports=GRPC_PORTS)
    route = GrpcRoute(
        "web", "default", (ParentRef("", "Service", "web", port=80),),
        rules=(GrpcRule(backends=(BackendRef("web", 80),),
                        retry=GrpcRetry((14,), attempts=2, backoff_ms=1)),),
    )  # fmt: skip
    return MeshSnapshot.from_resources(base.version, [*base.resources(), route])


async def test_unavailable_is_retried_and_the_client_gets_ok(root: Pki) -> None:
    app = Flaky()
    with trio.fail_after(30):
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(app.unary)}
        )
        async with grpc_mesh(root, handler=handler, snapshot=routed) as (mesh, channel):
            unary = channel.unary_unary("/test.Echo/Unary")
            message = b"2:a" + b"x" * 1000
            assert await call(unary, message) == b"%d" % len(message)  # the whole message again
            assert app.seen[message[:64]] == 3  # two UNAVAILABLE, then OK
            with pytest.raises(grpc.RpcError) as caught:
                await call(unary, b"fail:b")
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # not a retry code
            assert app.seen[b"fail:b"] == 1
            big = b"1:c" + b"y" * (80 * 1024)
            with pytest.raises(grpc.RpcError) as caught:
                await call(unary, big)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # past the copy: as is
            assert app.seen[big[:64]] == 1
            assert mesh.metric("istio_requests_total", grpc_response_status="14",
                               response_flags="URX") == 1  # fmt: skip
