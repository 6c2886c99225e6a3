"""RequestMirror to a backend whose port declares ``http2``: the copy goes as an HTTP/2
request (an h2c or gRPC app would refuse HTTP/1.1), with ``-shadow`` on its authority and
the original's body, while the client gets the real backend's answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from mesh.hbone import H2Stream
from tests.integration.h2_support import serve_h2c
from tests.integration.test_waypoint_l7 import world
from tests.integration.waypoint_support import SOURCE_ID, WAYPOINT_ID, Client, Pod, open_mesh
from tests.pki import Pki
from tests.waiting import wait_until

MIRRORED = """
---
apiVersion: v1
kind: Service
metadata: {name: shadow, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {version: v2}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    backendRefs: [{name: web-v1, port: 80}]
"""


class H2App:
    """An h2c app on our engine that records each request (method, path, authority, body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, stream: H2Stream) -> None:
        headers = dict(stream.request_headers)
        self.headers.append(headers)
        body = b""
        while data := await stream.receive_some():
            body += data
        self.seen.append((headers[":method"], headers[":path"], headers[":authority"], body))
        stream.send_headers([(":status", "200")], end_stream=True)


@pytest.fixture
async def shadow() -> AsyncIterator[tuple[H2App, int]]:
    app = H2App()
    async with trio.open_nursery() as nursery:
        yield app, await nursery.start(serve_h2c, app.handle)
        nursery.cancel_scope.cancel()


async def test_a_mirror_to_an_http2_port_is_sent_as_http2(
    root: Pki, shadow: tuple[H2App, int]
) -> None:
    app, port = shadow
    pods = [Pod("web-0", "10.0.0.11"), Pod("web-1", "10.0.0.12", app=False, app_port=port)]
    with trio.fail_after(20):
        async with open_mesh(root, pods, snapshot=world(MIRRORED)) as mesh:
            client = Client(await mesh.connect())
            status, _h, _body = await client.request("GET", "/a")
            assert status == 200  # web-0's answer (the h11 app), not the mirror's
            status, _h, _body = await client.request("POST", "/b", body=b"copy me")
            assert status == 200
            await client.stream.aclose()
            await wait_until(lambda: len(app.seen) == 2)
    shadow_host = "web.default.svc.cluster.local-shadow"
    assert sorted(app.seen) == [
        ("GET", "/a", shadow_host, b""),
        ("POST", "/b", shadow_host, b"copy me"),
    ]
    assert pods[0].seen == [
        ("GET", "/a", "web.default.svc.cluster.local"),
        ("POST", "/b", "web.default.svc.cluster.local"),
    ]


async def test_the_copy_carries_the_originals_request_id_and_client_cert_header(
    root: Pki, shadow: tuple[H2App, int]
) -> None:
    """As Envoy's shadow: the same ``x-request-id`` as the original (the two can be matched)
    and the waypoint's ``x-forwarded-client-cert``, never the client's forged one."""
    app, port = shadow
    pods = [Pod("web-0", "10.0.0.11"), Pod("web-1", "10.0.0.12", app=False, app_port=port)]
    with trio.fail_after(20):
        async with open_mesh(root, pods, snapshot=world(MIRRORED)) as mesh:
            client = Client(await mesh.connect())
            forged = [("x-request-id", "r-42"), ("x-forwarded-client-cert", "By=evil;URI=evil")]
            status, _h, _body = await client.request("GET", "/a", headers=forged)
            assert status == 200
            status, _h, _body = await client.request("GET", "/b")  # an id made here
            assert status == 200
            await client.stream.aclose()
            await wait_until(lambda: len(app.headers) == 2)
    first, second = sorted(app.headers, key=lambda h: h[":path"])
    assert first["x-request-id"] == "r-42"
    assert second["x-request-id"] not in ("", "r-42")
    for copy in (first, second):
        assert copy["x-forwarded-client-cert"] == f"By={WAYPOINT_ID};URI={SOURCE_ID}"
