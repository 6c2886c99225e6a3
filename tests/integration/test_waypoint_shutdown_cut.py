"""A request still unanswered when the waypoint stops (its drain ran out, as after
SIGTERM with ``drain_seconds``): the client gets a readable answer, 503 over HTTP/1.1 and
h2c, UNAVAILABLE (grpc-status 14, trailers-only) to a gRPC caller, and the access log
says so (503, flag ``LR``). Before, a gRPC caller got a bare HTTP 500 (UNKNOWN to grpcio),
an HTTP/1.1 client an empty reply, and the log said 0 and ``-`` or nothing."""

from __future__ import annotations

import pytest
import trio
from structlog.testing import capture_logs

from tests.integration.h2_raw_support import raw_h2
from tests.integration.hostile_support import read_all, status_of
from tests.integration.recording_apps import recording_mesh
from tests.pki import Pki
from tests.waiting import wait_until

H = b"Host: web\r\n"


async def test_an_http1_request_cut_by_the_stop_gets_503(root: Pki) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with recording_mesh(root, "http1") as (mesh, app):
            stream = await mesh.connect()
            await stream.send_all(b"POST /slow HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nab")
            await wait_until(lambda: "/slow" in app.begun)  # at the app, unanswered
            mesh.serving.cancel()
            answer = await read_all(stream)
            assert status_of(answer) == 503
            assert b"connection: close" in answer.lower()
            assert answer.endswith(b"the waypoint is shutting down")
    (line,) = [e for e in logs if e["event"] == "request" and e["path"] == "/slow"]
    assert (line["response_code"], line["response_flags"]) == (503, "LR")


@pytest.mark.parametrize("grpc", [True, False], ids=["grpc", "h2c"])
async def test_an_h2_request_cut_by_the_stop_gets_an_answer_it_can_read(
    root: Pki, grpc: bool
) -> None:
    content_type = "application/grpc" if grpc else "application/octet-stream"
    head = [(":method", "POST"), (":scheme", "http"), (":path", "/pkg.Svc/Slow"),
            (":authority", "web"), ("content-type", content_type), ("te", "trailers")]  # fmt: skip
    with trio.fail_after(20), capture_logs() as logs:
        async with recording_mesh(root, "h2c") as (mesh, app), raw_h2(mesh) as h2:
            await h2.send(h2.headers(1, head), h2.data(1, b"\x00\x00\x00\x00\x02hi"))
            await wait_until(lambda: "/pkg.Svc/Slow" in app.begun)  # its body never ends
            mesh.serving.cancel()
            answer = await h2.finished(1)
            assert answer.ended
            if grpc:  # trailers-only: grpcio reads UNAVAILABLE, a status it may retry
                assert answer.status == 200
                assert dict(answer.headers)["grpc-status"] == "14"
            else:
                assert answer.status == 503
    (line,) = [e for e in logs if e["event"] == "request" and e["path"] == "/pkg.Svc/Slow"]
    assert (line["response_code"], line["response_flags"]) == (503, "LR")
    if grpc:
        assert line["grpc_status"] == "14"
