"""Traffic that is not HTTP at the waypoint (a port declared TCP, or an undeclared one whose
first bytes are no HTTP) still passes the AuthorizationPolicies binding the waypoint, on
their L4 part, with Istio's rule for L7 fields: an ALLOW rule naming methods or paths never
matches a TCP connection, and a DENY rule applies on its sources and ports alone. Found by
a hostile client sending ``FOO /admin`` past a DENY on its principal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.integration.test_waypoint_l7 import WORLD, world
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki

DB = """
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: 10.96.0.40
  selector: {app: web}
  ports:
  - {name: tcp-db, port: 5432, targetPort: 8080}
  - {name: other, port: 6000, targetPort: 8080}
"""
DENY_CLIENT = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: default}
spec:
  targetRefs: [{kind: Service, name: db}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}],
           to: [{operation: {paths: [/admin]}}]}]
"""
ALLOW_GET_ONLY = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""
ALLOW_CLIENT = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: client-only, namespace: default}
spec:
  targetRefs: [{kind: Service, name: db}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
"""


async def echo_app(*, task_status: trio.TaskStatus[int]) -> None:
    """A TCP app that echoes what it gets, upper-cased, until the client closes."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data.upper())
            except trio.BrokenResourceError:
                return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


@pytest.fixture
async def app_port() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(echo_app)
        nursery.cancel_scope.cancel()


def both(app_port: int) -> list[Pod]:
    """The two pods behind ``db`` (the L7 world's web-0 and web-1), one echo app for both."""
    return [Pod(name, ip, app=False, app_port=app_port)
            for name, ip in (("web-0", "10.0.0.11"), ("web-1", "10.0.0.12"))]  # fmt: skip


async def talk(mesh: Mesh, port: int, data: bytes) -> bytes:
    (
        """Send ``data`` to ``db``'s ``port`` through the waypoint; what came back before the
    end (nothing when the waypoint refused the connection)."""
        ""
    )
    stream = await mesh.connect(f"10.96.0.40:{port}")
    got = b""
    async with stream:
        try:
            await stream.send_all(data)
            with trio.move_on_after(2):
                while len(got) < len(data):
                    piece = await stream.receive_some()
                    if not piece:
                        break
                    got += piece
        except trio.BrokenResourceError:  # refused before or after the bytes went
            assert not got
    return got


@pytest.mark.parametrize("port", [5432, 6000])
async def test_a_deny_on_the_principal_stops_tcp_whatever_its_l7_fields(
    root: Pki, app_port: int, port: int
) -> None:
    pods = both(app_port)
    with trio.fail_after(20):
        async with open_mesh(root, pods, snapshot=world(DB + DENY_CLIENT)) as mesh:
            assert await talk(mesh, port, b"FOO /admin HTTP/9\r\n") == b""


async def test_an_allow_rule_with_l7_fields_never_matches_tcp(root: Pki, app_port: int) -> None:
    pods = both(app_port)
    with trio.fail_after(20):
        async with open_mesh(root, pods, snapshot=world(DB + ALLOW_GET_ONLY)) as mesh:
            assert await talk(mesh, 5432, b"\x00\x00\x00\x08startup") == b""


async def test_an_allow_on_the_principal_lets_tcp_through(root: Pki, app_port: int) -> None:
    pods = both(app_port)
    with trio.fail_after(20):
        async with open_mesh(root, pods, snapshot=world(DB + ALLOW_CLIENT)) as mesh:
            assert await talk(mesh, 5432, b"hello db") == b"HELLO DB"
            assert await talk(mesh, 6000, b"\x16\x03\x01 not http") == b"\x16\x03\x01 NOT HTTP"
            assert WORLD  # the same world as the L7 tests: the waypoint binds namespace default
