"""Leader election between control planes against the real API server: two replicas
(in-process, their Lease in the test's namespace with a 3 s lease), exactly one holds the
Lease, says so on ``/metrics`` and writes status and Events; stopping it hands over at
once (it releases the Lease) and the other writes; a leader that finds the Lease taken
stops writing and takes it back once the usurper's lease runs out."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from k8s.controlplane_process import ControlPlaneConfig, Ports, run_controlplane
from k8s.leader import LEASE_NAME
from tests.kube import crds
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import Cluster
from tests.kube.planes import _http_get
from tests.kube.test_ca import control_plane
from tests.kube.test_status import condition, config, events_for

pytestmark = pytest.mark.kube

AP = "security.istio.io/v1"
LEASE_API = "coordination.k8s.io/v1"
ZTUNNEL = "ambit.io/ZtunnelAccepted"
HANDOVER_SECONDS = 5.0  # a released Lease is taken at the peer's next try (0.5 s apart)


def l7_policy(ns: str, name: str) -> Obj:
    return {
        "apiVersion": AP, "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    }  # fmt: skip


async def leading(ports: Ports) -> bool:
    status, body = await _http_get(ports.metrics, "/metrics")
    assert status == 200
    return b"\nambit_controlplane_leader 1.0" in body


async def holder(admin: KubeAdmin, ns: str) -> str | None:
    """Who holds the Lease (None: nobody, or no Lease yet)."""
    try:
        lease = await admin.get(LEASE_API, "Lease", LEASE_NAME, ns)
    except NotFound:
        return None
    return str(lease["spec"].get("holderIdentity") or "") or None


async def following(ports: Ports) -> bool:
    return not await leading(ports)


async def holds(admin: KubeAdmin, ns: str, name: str) -> bool:
    return await holder(admin, ns) == name


async def written_by(admin: KubeAdmin, ns: str, name: str) -> str:
    """The reportingInstance of the policy's Event, once its status is written."""

    async def probe() -> str | None:
        policy = await admin.get(AP, "AuthorizationPolicy", name, ns)
        if condition(policy.get("status") or {}, ZTUNNEL) != ("False", "L7AttributesIgnored"):
            return None
        managers = {m["manager"] for m in policy["metadata"]["managedFields"]
                    if m.get("subresource") == "status"}  # fmt: skip
        assert managers == {"ambit"}
        events = await events_for(admin, ns, name)
        return str(events[0]["reportingInstance"]) if events else None

    return await wait_for(probe, seconds=30.0, interval=0.2)


async def stoppable(
    plane: ControlPlaneConfig, scope: trio.CancelScope, *, task_status: trio.TaskStatus[Ports]
) -> None:
    with scope:
        await run_controlplane(plane, task_status=task_status)


async def test_one_of_two_replicas_leads_and_a_stopped_leader_hands_over(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, tmp_path: Path
) -> None:
    admin, ns = kube_admin, kube_ns
    with trio.fail_after(120):
        await crds.install(admin, crds.policy_crds("security.istio.io"))
        await admin.create(l7_policy(ns, "first"))
        scopes: dict[str, trio.CancelScope] = {}
        ports: dict[str, Ports] = {}
        async with trio.open_nursery() as nursery:
            for name in ("a", "b"):
                plane = config(kube_cluster, ns, tmp_path / name, name)
                scopes[name] = trio.CancelScope()
                ports[name] = await nursery.start(stoppable, plane, scopes[name])
            first = await wait_for(lambda: holder(admin, ns), seconds=30.0)
            second = {"a": "b", "b": "a"}[first]
            assert await written_by(admin, ns, "first") == first
            assert await leading(ports[first])
            assert not await leading(ports[second])

            # The leader stops: it releases the Lease, the other takes it and writes.
            scopes[first].cancel()
            await wait_for(lambda: holds(admin, ns, second), seconds=HANDOVER_SECONDS, interval=0.1)
            await admin.create(l7_policy(ns, "second"))
            assert await written_by(admin, ns, "second") == second
            assert await leading(ports[second])
            nursery.cancel_scope.cancel()


async def test_a_leader_that_finds_the_lease_taken_stops_then_takes_it_back(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, tmp_path: Path
) -> None:
    admin, ns = kube_admin, kube_ns
    with trio.fail_after(120):
        async with control_plane(config(kube_cluster, ns, tmp_path, "only")) as ports:
            await wait_for(lambda: leading(ports), seconds=30.0, interval=0.1)
            lease = await admin.get(LEASE_API, "Lease", LEASE_NAME, ns)
            lease["spec"]["holderIdentity"] = "usurper"  # and it never renews
            await admin.request(
                "PUT", f"/apis/{LEASE_API}/namespaces/{ns}/leases/{LEASE_NAME}", lease
            )
            # Found at its next renewal (0.5 s later).
            await wait_for(lambda: following(ports), seconds=3.0, interval=0.1)
            assert await holder(admin, ns) == "usurper"
            # The usurper's 3 s lease runs out unrenewed: taken back.
            await wait_for(lambda: leading(ports), seconds=10.0, interval=0.1)
            assert await holder(admin, ns) == "only"
