"""Endpoints outside the mesh behind a waypoint: a Service whose EndpointSlice names an
address that is no pod (an external database, a VM), or a pod not enrolled, is reached
by the waypoint with plain TCP, as Istio's waypoint and ambit's ztunnel reach it, while
the mesh's pods keep getting HBONE with the waypoint's identity. A plain endpoint that
refuses is a 503 for the caller, like any endpoint that cannot be reached."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from mesh.model import Endpoint, MeshSnapshot, Service, ServicePort
from tests.builders import snapshot, workload
from tests.integration.waypoint_support import (
    CLIENT_IP,
    VIP,
    Client,
    Pod,
    app_server,
    open_mesh,
)
from tests.pki import Pki

OUTSIDE = "default/web/127.0.0.1"  # an EndpointSlice address's uid: no workload has it


def outside_snapshot(app_port: int, *, also: list[Pod]) -> MeshSnapshot:
    """Service web: an endpoint outside the mesh (the plain app on loopback), and ``also``
    the mesh's pods, on port 80."""
    meshed = [workload(p.name, ip=p.ip, labels={"app": "web"}, sa="web") for p in also]
    endpoints = (
        Endpoint(OUTSIDE, "127.0.0.1", ((80, app_port),)),
        *(Endpoint(w.uid, w.ip, ((80, 8080),)) for w in meshed),
    )
    web = Service("web", "default", VIP, (ServicePort(80, 8080, name="http"),), endpoints,
                  waypoint="default/waypoint")  # fmt: skip
    client = workload("client", ip=CLIENT_IP, labels={"app": "client"})
    return snapshot(web, *meshed, client, workload("waypoint-0", ip="10.0.0.30", sa="waypoint"))


@pytest.fixture
async def plain_app() -> AsyncIterator[tuple[int, list[tuple[str, str, str]]]]:
    seen: list[tuple[str, str, str]] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(app_server, "outside", seen)
        yield port, seen
        nursery.cancel_scope.cancel()


async def test_an_endpoint_outside_the_mesh_is_reached_plain(
    root: Pki, plain_app: tuple[int, list[tuple[str, str, str]]]
) -> None:
    port, seen = plain_app
    with trio.fail_after(10):
        async with open_mesh(root, [], snapshot=outside_snapshot(port, also=[])) as mesh:
            client = Client(await mesh.connect())
            status, _headers, body = await client.request("GET", "/orders")
            await client.stream.aclose()
            await mesh.requests_counted(response_code="200")
    assert status == 200
    assert b"outside" in body
    assert [(m, p) for m, p, _h in seen] == [("GET", "/orders")]


async def test_mesh_pods_keep_hbone_beside_an_outside_endpoint(
    root: Pki, plain_app: tuple[int, list[tuple[str, str, str]]]
) -> None:
    port, seen = plain_app
    pod = Pod("web-0", "10.0.0.11")
    with trio.fail_after(20):
        async with open_mesh(root, [pod], snapshot=outside_snapshot(port, also=[pod])) as mesh:
            for _ in range(40):  # the balancer spreads them over both
                client = Client(await mesh.connect())
                status, _headers, _body = await client.request("GET", "/")
                assert status == 200
                await client.stream.aclose()
    assert seen  # some went plain to the outside app
    assert pod.seen  # and some through the pod's ztunnel, over HBONE
    assert {str(peer) for peer in pod.connects} == {"spiffe://cluster.local/ns/default/sa/waypoint"}


async def test_an_outside_endpoint_that_refuses_is_503(root: Pki) -> None:
    with trio.socket.socket() as probe:  # a port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with trio.fail_after(10):
        async with open_mesh(root, [], snapshot=outside_snapshot(closed, also=[])) as mesh:
            client = Client(await mesh.connect())
            status, _headers, _body = await client.request("GET", "/")
            await client.stream.aclose()
    assert status == 503
