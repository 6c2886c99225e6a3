"""The waypoint process (``run_waypoint``) against a real control plane on loopback: it
gets its own certificate with its service account's token, its namespace's view on the
config stream, turns ready, serves HBONE with its identity, and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio
from structlog.testing import capture_logs

from ca import CertificateAuthority, LocalSigner
from ca.auth import StaticAuthorizer, TokenAuthenticator
from k8s import manifests
from k8s.controlplane import Access, ControlPlane
from mesh.certs import open_certificate_manager
from mesh.hbone.client import HboneConnectError, open_hbone_pool
from mesh.identity import SpiffeId
from tests.integration.test_controlplane_process import http_get
from waypoint.config import WaypointConfig
from waypoint.main import Listening, run_waypoint

TD = "cluster.local"
WAYPOINT = SpiffeId(TD, "shop", "waypoint")
SA_CALLER = "system:serviceaccount:shop:waypoint"
MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  nodeName: node-1
  serviceAccountName: waypoint
  containers: [{name: waypoint, image: ambit}]
"""


async def test_a_waypoint_gets_its_identity_and_view_then_drains_on_sigterm() -> None:
    access = Access(
        ca_authenticator=TokenAuthenticator({"wp-token": SA_CALLER}),
        ca_authorizer=StaticAuthorizer({SA_CALLER: [str(WAYPOINT)]}),
    )
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD, access=access)
    plane.update(
        o.with_ip("10.244.1.11") if isinstance(o, manifests.Pod) else o
        for o in manifests.loads(MANIFEST, "shop.yaml")
    )
    with trio.fail_after(30), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            ca_port, config_port = await nursery.start(
                lambda task_status: plane.serve(
                    "127.0.0.1", ca_port=0, config_port=0, task_status=task_status
                )
            )
            config = WaypointConfig(
                namespace="shop", name="waypoint", control_plane=("127.0.0.1", config_port),
                ca=("127.0.0.1", ca_port), token="wp-token", bundle=plane.authority.trust_bundle,
                listen_ip="127.0.0.1", hbone_port=0, admin_port=0, metrics_port=0,
                readiness_port=0, drain_seconds=2.0,
            )  # fmt: skip
            done = trio.Event()

            async def waypoint(task_status: trio.TaskStatus[Listening]) -> None:
                await run_waypoint(config, task_status=task_status)
                done.set()

            listening: Listening = await nursery.start(waypoint)

            async def ready() -> int:
                return (await http_get(listening.readiness[1], "/healthz/ready"))[0]

            statuses: list[int] = []

            async def poll() -> None:
                statuses.append(await ready())

            for _ in range(100):
                await poll()
                if statuses[-1] == 200:
                    break
                await trio.sleep(0.05)
            assert statuses[-1] == 200
            status, body = await http_get(listening.admin[1], "/config_dump")
            assert status == 200
            dump = json.loads(body)
            assert dump["identity"] == str(WAYPOINT)
            assert [s["name"] for s in dump["config"]["services"]] == ["waypoint", "web"]

            # A source ztunnel reaches it expecting the waypoint's identity, and nothing else.
            signer = LocalSigner(plane.authority, caller="test")
            async with open_certificate_manager(signer) as certs:
                client_cert = await certs.fetch_now(SpiffeId(TD, "shop", "client"))
            async with open_hbone_pool(lambda _s: client_cert) as pool:
                stream = await pool.connect(
                    source=client_cert.identity, address=listening.hbone,
                    authority="10.96.0.10:80", expected=[WAYPOINT],
                )  # fmt: skip
                await stream.aclose()
                with pytest.raises(HboneConnectError):
                    await pool.connect(
                        source=client_cert.identity, address=listening.hbone,
                        authority="10.96.0.10:80", expected=[SpiffeId(TD, "shop", "other")],
                    )  # fmt: skip

            os.kill(os.getpid(), signal.SIGTERM)
            await done.wait()
            nursery.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert "waypoint_stopping" in events
    assert "waypoint_drained" in events
