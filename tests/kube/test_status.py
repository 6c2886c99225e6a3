"""Status written back to the cluster by ``ambit controlplane --source kubernetes`` (the
status writer, on the Lease's holder), against the real API server: what ``kubectl get
gateway,httproute -o yaml`` shows. The control plane runs in-process
(``run_controlplane``, the command's wiring) with its Lease in the test's namespace and
short timings; the admin client reads back what a user would see."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import trio

from k8s import manifests as m
from k8s.controlplane_process import ControlPlaneConfig
from k8s.events import EventRecorder
from k8s.leader import LeaseConfig
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from k8s.status_writer import StatusWriter
from k8s.store import Condition, ObjectStore, ref_of
from mesh.constants import CONTROLLER_NAME
from tests.kube import crds
from tests.kube.client import Conflict, KubeAdmin, Obj, wait_for
from tests.kube.cluster import Cluster
from tests.kube.installing import ambit_crds
from tests.kube.kubelet import service
from tests.kube.test_ca import control_plane

pytestmark = pytest.mark.kube

__all__ = ["ambit_crds"]  # the fixture, used here

GW = "gateway.networking.k8s.io/v1"
SECONDS = 30.0  # from a change on the cluster to its status written back


def config(cluster: Cluster, ns: str, directory: Path, identity: str) -> ControlPlaneConfig:
    lease = LeaseConfig(
        namespace=ns, identity=identity, lease_duration=3.0, renew_deadline=2.0,
        retry_period=0.5,
    )  # fmt: skip
    return ControlPlaneConfig(
        files=(), ca_dir=directory / "ca", source="kubernetes", kubeconfig=cluster.kubeconfig,
        host="127.0.0.1", ca_port=0, config_port=0, metrics_port=0, lease=lease,
    )  # fmt: skip


def condition(status: dict[str, Any], type_: str) -> tuple[str, str] | None:
    """The status and reason of condition ``type_`` of a status (or a parent entry)."""
    found = [c for c in status.get("conditions") or [] if c["type"] == type_]
    return (found[0]["status"], found[0]["reason"]) if found else None


async def until(
    admin: KubeAdmin, api_version: str, kind: str, name: str, ns: str | None,
    holds: Callable[[Obj], object],
) -> Obj:  # fmt: skip
    """The object once ``holds`` is true of it (TooSlowError after ``SECONDS``)."""

    async def probe() -> Obj | None:
        obj = await admin.get(api_version, kind, name, ns)
        return obj if holds(obj) else None

    return await wait_for(probe, seconds=SECONDS, interval=0.2)


def ambit_parents(route: Obj) -> list[Obj]:
    parents = (route.get("status") or {}).get("parents") or []
    return [p for p in parents if p["controllerName"] == CONTROLLER_NAME]


def route(ns: str, backend: str, parents: list[Obj]) -> Obj:
    rules = [{"backendRefs": [{"name": backend, "port": 80}]}]
    return {
        "apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": ns},
        "spec": {"parentRefs": parents, "rules": rules},
    }  # fmt: skip


async def create_objects(admin: KubeAdmin, ns: str) -> None:
    with suppress(Conflict):  # the session's cluster may have it already
        await admin.create({"apiVersion": GW, "kind": "GatewayClass",
                            "metadata": {"name": "ambit-waypoint"},
                            "spec": {"controllerName": CONTROLLER_NAME}})  # fmt: skip
    docs: list[Obj] = [
        {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": ns},
         "spec": {"gatewayClassName": "ambit-waypoint",
                  "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
        {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "other", "namespace": ns},
         "spec": {"gatewayClassName": "example-class",
                  "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "waypoint", "namespace": ns},
         "spec": {"ports": [{"name": "mesh", "port": 15008}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "echo", "namespace": ns,
                      "labels": {"istio.io/use-waypoint": "waypoint"}},
         "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80}]}},
        route(ns, "echo", [{"group": "", "kind": "Service", "name": "echo", "port": 80},
                           {"name": "other"}]),
        {"apiVersion": "security.ambit.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "l7", "namespace": ns},
         "spec": {"selector": {"matchLabels": {"app": "echo"}},
                  "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "at-waypoint", "namespace": ns},
         "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                  "name": "waypoint"}],
                  "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}},
    ]  # fmt: skip
    for doc in docs:
        await admin.create(doc)


async def events_for(admin: KubeAdmin, ns: str, name: str) -> list[Obj]:
    found = await admin.list("events.k8s.io/v1", "Event", ns)
    return [e for e in found if e["regarding"]["name"] == name]


async def some_events(admin: KubeAdmin, ns: str, name: str) -> list[Obj] | None:
    """The Events about ``name``, None while there are none (what ``wait_for`` waits on)."""
    return await events_for(admin, ns, name) or None


def of(obj: Obj, type_: str) -> tuple[str, str] | None:
    """The status and reason of the object's condition ``type_``."""
    return condition(obj.get("status") or {}, type_)


def parent_of(obj: Obj, type_: str) -> tuple[str, str] | None:
    """The status and reason of ``type_`` in ambit's (first) parent entry of a route."""
    mine = ambit_parents(obj)
    return condition(mine[0], type_) if mine else None


async def set_backend(admin: KubeAdmin, ns: str, backend: str) -> None:
    rules = [{"backendRefs": [{"name": backend, "port": 80}]}]
    await admin.patch(GW, "HTTPRoute", "r", {"spec": {"rules": rules}}, ns)


THEIRS: Obj = {
    "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "other"},
    "controllerName": "example.com/gateway",
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
         "lastTransitionTime": "2026-12-06T00:00:00Z"},
    ],
}  # fmt: skip
AMBIT_AP = "security.ambit.io/v1"
ISTIO_AP = "security.istio.io/v1"


async def test_gateway_route_policy_and_service_status_are_written(
    kube_cluster: Cluster,
    kube_admin: KubeAdmin,
    kube_ns: str,
    gateway_crds: list[str],
    ambit_crds: list[str],
    tmp_path: Path,
) -> None:
    admin, ns = kube_admin, kube_ns
    with trio.fail_after(120):
        await crds.install(admin, crds.policy_crds("security.istio.io"))
        await create_objects(admin, ns)
        async with control_plane(config(kube_cluster, ns, tmp_path, "only")):
            # The waypoint Gateway: Accepted, not Programmed (no proxy runs), its address.
            vip = (await admin.get("v1", "Service", "waypoint", ns))["spec"]["clusterIP"]
            pending = ("False", "Pending")
            gateway = await until(
                admin, GW, "Gateway", "waypoint", ns, lambda o: of(o, "Programmed") == pending
            )
            assert of(gateway, "Accepted") == ("True", "Accepted")
            assert gateway["status"]["addresses"] == [{"type": "IPAddress", "value": vip}]
            observed = {c["observedGeneration"] for c in gateway["status"]["conditions"]}
            assert observed == {gateway["metadata"]["generation"]}
            other = await admin.get(GW, "Gateway", "other", ns)  # another controller's
            assert of(other, "Programmed") != pending
            await until(
                admin, GW, "GatewayClass", "ambit-waypoint", None,
                lambda o: of(o, "Accepted") == ("True", "Accepted"),
            )  # fmt: skip

            # The route: one entry, for its Service parent; none for the other Gateway.
            r = await until(admin, GW, "HTTPRoute", "r", ns, ambit_parents)
            (entry,) = r["status"]["parents"]
            ref = {"group": "", "kind": "Service", "name": "echo", "port": 80}
            assert entry["parentRef"] == ref
            assert condition(entry, "Accepted") == ("True", "Accepted")
            assert condition(entry, "ResolvedRefs") == ("True", "ResolvedRefs")
            observed = {c["observedGeneration"] for c in entry["conditions"]}
            assert observed == {r["metadata"]["generation"]}

            # Another controller writes its entry; ambit's next write keeps it.
            parents = {"status": {"parents": [entry, THEIRS]}}
            await admin.patch(GW, "HTTPRoute", "r", parents, ns, subresource="status")
            # A backend that does not exist: ResolvedRefs False, with Gateway API's reason.
            await set_backend(admin, ns, "gone")
            unresolved = ("False", "BackendNotFound")
            r = await until(
                admin,
                GW,
                "HTTPRoute",
                "r",
                ns,
                lambda o: parent_of(o, "ResolvedRefs") == unresolved,
            )
            controllers = sorted(p["controllerName"] for p in r["status"]["parents"])
            assert controllers == sorted([CONTROLLER_NAME, "example.com/gateway"])
            observed = {c["observedGeneration"] for c in ambit_parents(r)[0]["conditions"]}
            assert observed == {r["metadata"]["generation"]}
            # An Event says so, once.
            events = await wait_for(lambda: some_events(admin, ns, "r"), seconds=SECONDS)
            said = [(e["reason"], e["type"], e["reportingController"]) for e in events]
            assert said == [("BackendNotFound", "Warning", "ambit.io/controlplane")]

            # Fixed: ResolvedRefs True again.
            await set_backend(admin, ns, "echo")
            resolved = ("True", "ResolvedRefs")
            await until(
                admin, GW, "HTTPRoute", "r", ns, lambda o: parent_of(o, "ResolvedRefs") == resolved
            )

            # Broken again: the same Event counts it, no second one.
            await set_backend(admin, ns, "gone")

            async def counted() -> list[Obj] | None:
                found = await events_for(admin, ns, "r")
                counts = [(e.get("series") or {}).get("count") for e in found]
                return found if counts == [2] else None

            assert len(await wait_for(counted, seconds=SECONDS)) == 1
            await set_backend(admin, ns, "echo")

            # The Service parent dropped: ambit's entry goes, the other controller's stays.
            only_other = {"spec": {"parentRefs": [{"name": "other"}]}}
            await admin.patch(GW, "HTTPRoute", "r", only_other, ns)
            r = await until(admin, GW, "HTTPRoute", "r", ns, lambda o: not ambit_parents(o))
            assert [p["controllerName"] for p in r["status"]["parents"]] == ["example.com/gateway"]

            # Policies: which proxy enforces them (Istio's ZtunnelAccepted semantics).
            ztunnel = "ambit.io/ZtunnelAccepted"
            l7 = await until(
                admin, AMBIT_AP, "AuthorizationPolicy", "l7", ns, lambda o: of(o, ztunnel)
            )
            assert of(l7, ztunnel) == ("False", "L7AttributesIgnored")
            assert l7["status"]["observedGeneration"] == l7["metadata"]["generation"]
            at = await until(
                admin, ISTIO_AP, "AuthorizationPolicy", "at-waypoint", ns, lambda o: of(o, ztunnel)
            )
            assert of(at, ztunnel) == ("True", "WaypointOnly")
            assert of(at, "ambit.io/WaypointAccepted") == ("True", "Accepted")  # Gateway waypoint
            events = await wait_for(lambda: some_events(admin, ns, "l7"), seconds=SECONDS)
            assert [e["reason"] for e in events] == ["L7AttributesIgnored"]

            # The Service: bound to a waypoint that is not ready, which fails closed.
            bound = "ambit.io/WaypointBound"
            echo = await until(admin, "v1", "Service", "echo", ns, lambda o: of(o, bound))
            assert of(echo, bound) == ("False", "WaypointNotReady")
            fields = echo["metadata"]["managedFields"]
            assert {m["manager"] for m in fields if m.get("subresource") == "status"} == {"ambit"}
            # Its label removed: the condition goes.
            unlabel = {"metadata": {"labels": {"istio.io/use-waypoint": None}}}
            await admin.patch("v1", "Service", "echo", unlabel, ns)
            await until(admin, "v1", "Service", "echo", ns, lambda o: not of(o, bound))
            # Changes since did not repeat the policy's Event.
            assert len(await events_for(admin, ns, "l7")) == 1

            # A policy ambit refuses (the test's CRD takes anything): an Event says why.
            bogus = {"apiVersion": ISTIO_AP, "kind": "AuthorizationPolicy",
                     "metadata": {"name": "bogus", "namespace": ns},
                     "spec": {"action": "BOGUS"}}  # fmt: skip
            uid = (await admin.create(bogus))["metadata"]["uid"]
            (event,) = await wait_for(lambda: some_events(admin, ns, "bogus"), seconds=SECONDS)
            assert (event["reason"], event["regarding"]["uid"]) == ("Refused", uid)
            assert "spec.action" in event["note"]


async def test_a_status_for_a_replaced_or_deleted_object_is_skipped(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    """The writer's store still holds an object's predecessor (another uid), and an object
    already deleted: neither gets a status, and neither counts as a failure to retry."""
    admin, ns = kube_admin, kube_ns
    with trio.fail_after(60):
        await admin.create(service(ns, "web", {"app": "web"}))
        store = ObjectStore(kinds=["Service"])
        stale = m.Service(name="web", namespace=ns, uid="0b5e7e0e-0000-4000-8000-000000000000")
        gone = m.Service(name="gone", namespace=ns, uid="0b5e7e0e-0000-4000-8000-000000000001")
        for obj in (stale, gone):
            store.put(obj)
            bound = Condition("ambit.io/WaypointBound", "True", "Bound", "m")
            store.set_conditions(ref_of(obj), [bound])
        store.mark_listed("Service")
        async with open_kube_api(KubeSourceConfig(kubeconfig=kube_cluster.kubeconfig)) as api:
            writer = StatusWriter(api, store, EventRecorder(api, instance="test"))
            assert await writer.write_round() == 0
        web = await admin.get("v1", "Service", "web", ns)
        assert not of(web, "ambit.io/WaypointBound")
