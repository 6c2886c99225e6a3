"""A waypoint proves who it is as its own service account: the CA gives a
``system:serviceaccount:NS:SA`` token exactly that account's identity, no node gets a
waypoint's identity, and the config stream gives namespace N's waypoint view only to
a certificate of a waypoint Gateway of N. The control plane on loopback, real
certificates, no root."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from ca import CertificateAuthority
from ca.auth import service_account_caller
from k8s import manifests
from k8s.controlplane import ControlPlane
from mesh.backoff import Backoff
from mesh.ca_client import CaClient, CaRefused
from mesh.certs import open_certificate_manager
from mesh.config_stream import ConfigClient
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId, WorkloadCertificate, control_plane_identity, ztunnel_identity
from mesh.model import MeshSnapshot
from tests.waiting import wait_until

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: edge-7f3c1
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: edge}
spec:
  nodeName: node-1
  serviceAccountName: edge
  containers: [{name: waypoint, image: ambit}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: web, image: web}]
"""

TD = "cluster.local"
EDGE = SpiffeId(TD, "shop", "edge")
WEB = SpiffeId(TD, "shop", "web")
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


@asynccontextmanager
async def running_plane() -> AsyncIterator[tuple[ControlPlane, int, int]]:
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)
    ips = {"edge-7f3c1": "10.244.1.20", "web": "10.244.1.10"}
    loaded = manifests.loads(MANIFEST, "test.yaml")
    plane.update(o.with_ip(ips[o.name]) if isinstance(o, manifests.Pod) else o for o in loaded)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(
            lambda task_status: plane.serve(
                "127.0.0.1", ca_port=0, config_port=0, task_status=task_status
            )
        )
        yield plane, *ports
        nursery.cancel_scope.cancel()


def ca(plane: ControlPlane, port: int, caller: str) -> CaClient:
    token = plane.tokens.token_for(caller)
    return CaClient(("127.0.0.1", port), token=token, bundle=plane.authority.trust_bundle)


async def refused(client: CaClient, identity: SpiffeId) -> int:
    async with open_certificate_manager(client) as certs:
        with pytest.raises(CaRefused) as refusal:
            await certs.fetch_now(identity)
    return refusal.value.status


async def test_a_waypoint_token_gets_its_own_identity_and_nothing_else() -> None:
    with trio.fail_after(20):
        async with running_plane() as (plane, ca_port, _):
            waypoint = ca(plane, ca_port, service_account_caller("shop", "edge"))
            async with open_certificate_manager(waypoint) as certs:
                assert (await certs.fetch_now(EDGE)).identity == EDGE
            assert await refused(waypoint, WEB) == 403
            assert await refused(waypoint, ztunnel_identity(TD)) == 403
            assert await refused(waypoint, SpiffeId(TD, "other", "edge")) == 403
            other_account = ca(plane, ca_port, service_account_caller("shop", "web"))
            assert await refused(other_account, EDGE) == 403


async def test_no_node_gets_a_waypoints_identity_even_where_it_runs() -> None:
    with trio.fail_after(20):
        async with running_plane() as (plane, ca_port, _):
            node = ca(plane, ca_port, "node-1")
            async with open_certificate_manager(node) as certs:
                assert (await certs.fetch_now(WEB)).identity == WEB
            assert await refused(node, EDGE) == 403, "ztunnel never captures the waypoint"


async def test_the_config_stream_serves_a_waypoint_gateways_certificate_only(logs: Logs) -> None:
    received: dict[SpiffeId, list[MeshSnapshot]] = {}
    with trio.fail_after(20):
        async with running_plane() as (plane, ca_port, config_port):
            certificates: dict[SpiffeId, WorkloadCertificate] = {}
            for identity, caller in ((EDGE, service_account_caller("shop", "edge")),
                                     (WEB, "node-1")):  # fmt: skip
                async with open_certificate_manager(ca(plane, ca_port, caller)) as certs:
                    certificates[identity] = await certs.fetch_now(identity)

            def client(source: SpiffeId) -> ConfigClient:
                async def on_update(snapshot: MeshSnapshot) -> None:
                    received.setdefault(source, []).append(snapshot)

                return ConfigClient(
                    pool, source=source, address=("127.0.0.1", config_port),
                    expected=control_plane_identity(TD), node="node-1", on_update=on_update,
                    backoff=Backoff(initial=0.05, maximum=0.2), token=None, role="waypoint",
                    namespace="shop",
                )  # fmt: skip

            async with (
                open_hbone_pool(certificates.__getitem__) as pool,
                trio.open_nursery() as nursery,
            ):
                await nursery.start(client(EDGE).run)
                impostor = client(WEB)
                nursery.start_soon(impostor.run)
                await wait_until(lambda: impostor.reconnects >= 2)
                nursery.cancel_scope.cancel()
    view = received[EDGE][-1]
    assert {w.name for w in view.workloads} == {"edge-7f3c1", "web"}
    assert WEB not in received
    reasons = [e["reason"] for e in logs if e["event"] == "config_stream_refused"]
    assert reasons
    assert "namespace 'shop' has no waypoint Gateway 'web'" in reasons[0]
