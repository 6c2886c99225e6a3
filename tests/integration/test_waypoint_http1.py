"""The waypoint's HTTP/1.1 data path, on loopback with real HBONE, real certificates and
real apps: what a client in a source pod and the app behind the Service observe."""

from __future__ import annotations

import hashlib
import json

import pytest
import trio

from mesh.hbone import HboneStreamRefused
from mesh.model import ServicePort
from tests.integration.waypoint_support import (
    SOURCE_ID,
    WAYPOINT_ID,
    Client,
    Pod,
    open_mesh,
    web_snapshot,
)
from tests.pki import Pki
from tests.waiting import wait_until


def pods(n: int = 2) -> list[Pod]:
    return [Pod(f"web-{i}", f"10.0.0.{11 + i}") for i in range(n)]


async def test_keep_alive_requests_are_balanced_per_request_and_carry_identity(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods()) as mesh:
            client = Client(await mesh.connect())
            seen: dict[str, int] = {}
            for i in range(20):
                status, _headers, body = await client.request(
                    "GET", f"/items/{i}",
                    headers=[("x-forwarded-client-cert", "By=forged;URI=spiffe://evil")],
                )  # fmt: skip
                assert status == 200
                answer = json.loads(body)
                seen[answer["app"]] = seen.get(answer["app"], 0) + 1
                assert answer["path"] == f"/items/{i}"
                xfcc = answer["headers"]["x-forwarded-client-cert"]
                assert xfcc == f"By={WAYPOINT_ID};URI={SOURCE_ID}"  # the forged one is gone
                assert answer["headers"]["x-request-id"]
            # One client connection, yet requests went to both pods (routing per request).
            assert set(seen) == {"web-0", "web-1"}
            # Each pod's ztunnel saw the waypoint's identity, never the client's.
            assert {p for pod in mesh.pods for p in pod.connects} == {WAYPOINT_ID}
            # Upstream connections were reused, not one per request.
            assert mesh.proxy.upstreams.opened <= 4
            await client.stream.aclose()


async def test_bodies_stream_both_ways_chunked_and_with_length(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            client = Client(await mesh.connect())
            chunks = [bytes([65 + i % 26]) * 50_000 for i in range(20)]  # 1 MB, chunked
            status, _h, body = await client.request("POST", "/upload", chunks=chunks)
            assert status == 200
            got = json.loads(body)["body"].encode()
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
            status, _h, body = await client.request("PUT", "/small", body=b"hello")
            assert status == 200
            assert json.loads(body)["body"] == "hello"
            await client.stream.aclose()


async def test_the_apps_status_reaches_the_client_and_is_counted(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            client = Client(await mesh.connect())
            assert (await client.request("GET", "/status/418"))[0] == 418
            assert (await client.request("GET", "/status/200"))[0] == 200
            await client.stream.aclose()
            labels = {
                "reporter": "waypoint",
                "source_workload": "client",
                "source_workload_namespace": "default",
                "source_principal": str(SOURCE_ID),
                "source_app": "client",
                "source_version": "v1",
                "destination_workload": "web-0",
                "destination_service": "web.default.svc.cluster.local",
                "destination_service_name": "web",
                "destination_principal": "spiffe://cluster.local/ns/default/sa/web",
                "connection_security_policy": "mutual_tls",
                "request_protocol": "http",
                "response_flags": "-",
            }
            await mesh.requests_counted(**labels, response_code="418")
            await mesh.requests_counted(**labels, response_code="200")


async def test_no_endpoint_is_503_uh_and_the_connection_goes_on(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            mesh.set_snapshot(web_snapshot([]))
            client = Client(await mesh.connect())
            status, _h, body = await client.request("GET", "/")
            assert (status, body) == (503, b"no healthy upstream")
            mesh.set_snapshot(web_snapshot(mesh.pods))
            assert (await client.request("GET", "/"))[0] == 200  # same connection
            await client.stream.aclose()
            await mesh.requests_counted(reporter="waypoint", response_code="503",
                               response_flags="UH", source_workload="client",
                               **_unknown_destination())  # fmt: skip


def _unknown_destination() -> dict[str, str]:
    return {"destination_workload": "unknown", "destination_principal": "unknown"}


async def test_an_endpoint_that_cannot_be_reached_is_retried_on_another(root: Pki) -> None:
    with trio.fail_after(20):
        dead, alive = Pod("web-0", "10.0.0.11"), Pod("web-1", "10.0.0.12")
        async with open_mesh(root, [alive]) as mesh:
            mesh.set_snapshot(web_snapshot([dead, alive]))  # dead has no ztunnel: refused
            client = Client(await mesh.connect())
            for _ in range(10):
                status, _h, body = await client.request("GET", "/")
                assert status == 200
                assert json.loads(body)["app"] == "web-1"
            await client.stream.aclose()


async def test_a_service_not_bound_to_this_waypoint_is_refused(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            mesh.set_snapshot(web_snapshot(mesh.pods, waypoint="default/other"))
            with pytest.raises(HboneStreamRefused):
                await mesh.connect()


async def test_a_malformed_request_gets_400_and_others_are_untouched(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            good = Client(await mesh.connect())
            bad = await mesh.connect()
            await bad.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
            answer = await _read_all(bad)
            assert answer.startswith(b"HTTP/1.1 400 ")
            big = await mesh.connect()
            await big.send_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
            )
            assert (await _read_all(big)).startswith(b"HTTP/1.1 431 ")
            assert (await good.request("GET", "/"))[0] == 200
            await good.stream.aclose()


async def test_an_upgrade_becomes_a_byte_relay(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            stream = await mesh.connect()
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
            assert head.startswith(b"HTTP/1.1 101 ")
            rest = head.partition(b"\r\n\r\n")[2]
            await stream.send_all(b"ping over the upgraded connection")
            while len(rest) < len(b"ping over the upgraded connection"):
                rest += await stream.receive_some()
            assert rest == b"ping over the upgraded connection"
            await stream.aclose()


async def test_an_undeclared_port_is_sniffed_http_or_tcp(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            # Port 80 is named nothing and declares no appProtocol: HTTP is recognised.
            client = Client(await mesh.connect())
            assert (await client.request("GET", "/"))[0] == 200
            await mesh.requests_counted(reporter="waypoint", response_code="200",
                               response_flags="-", source_workload="client",
                               destination_workload="web-0",
                               destination_principal="spiffe://cluster.local/ns/default/sa/web",
                               )  # fmt: skip
            await client.stream.aclose()


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    while data := await stream.receive_some():
        out += data
    return out


async def test_a_port_declared_tcp_is_relayed_as_bytes_and_counted(root: Pki) -> None:
    with trio.fail_after(20):
        tcp = [ServicePort(80, 8080, name="tcp-raw")]
        async with open_mesh(root, pods(1), ports=tcp) as mesh:
            stream = await mesh.connect()
            request = b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            await stream.send_all(request)
            answer = await _read_all(stream)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b'"path": "/raw"' in answer
            await stream.aclose()
            labels = {
                "reporter": "waypoint",
                "source_workload": "client",
                "destination_workload": "web-0",
                "connection_security_policy": "mutual_tls",
            }
            await wait_until(
                lambda: mesh.metric("istio_tcp_connections_closed_total", **labels) == 1
            )
            assert mesh.metric("istio_tcp_received_bytes_total", **labels) == len(request)
            assert mesh.metric("istio_tcp_sent_bytes_total", **labels) == len(answer)
            assert mesh.metric("istio_requests_total") == 0  # not parsed as HTTP


async def test_expect_100_continue_is_relayed_before_the_body_is_sent(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods(1)) as mesh:
            stream = await mesh.connect()
            await stream.send_all(
                b"PUT /big HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\n\r\n"
            )
            interim = b""
            while b"\r\n\r\n" not in interim:
                interim += await stream.receive_some()
            assert interim.startswith(b"HTTP/1.1 100 ")  # the app's go-ahead, through the waypoint
            await stream.send_all(b"hello")
            rest = interim.partition(b"\r\n\r\n")[2]
            while b'"body": "hello"' not in rest:
                rest += await stream.receive_some()
            assert rest.startswith(b"HTTP/1.1 200 ")
            await stream.aclose()
