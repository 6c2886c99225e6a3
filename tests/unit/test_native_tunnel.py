"""A waypoint's pod speaks HBONE itself (``Workload.native_tunnel``): it is in the mesh
whatever the dataplane-mode labels say, ztunnel plans traffic to it but never captures it,
and no node may have its identity."""

from __future__ import annotations

from typing import Any, cast

import trio

from k8s import manifests as m
from k8s.config_server import gateway_waypoint_authorizer
from k8s.controlplane import NodeAuthorizer
from k8s.store import ObjectRef, ref_of
from k8s.translate import Translator, translate
from mesh.constants import LABEL_GATEWAY_NAME
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Workload
from tests.k8s_builders import gateway, ns, pod, svc
from ztunnel.plan import ViaWaypoint, plan_outbound
from ztunnel.ztunnel import Ztunnel

USE = "istio.io/use-waypoint"
WAYPOINT_POD = {LABEL_GATEWAY_NAME: "waypoint"}
MESH_PORT = (m.ServicePortSpec(port=15008, target_port=15008),)


def shop(*, ambient: bool = False) -> list[m.K8sObject]:
    """Namespace shop, not ambient unless asked, its Services sent through its waypoint;
    the waypoint's Gateway, pod and Service; web's pod (ambient by its own label) and
    Service; a client in namespace other."""
    return [
        ns("shop", ambient=ambient, labels={USE: "waypoint"}),
        ns("other"),
        gateway("waypoint", "shop"),
        pod("waypoint-x1", "shop", ip="10.0.0.9", labels=WAYPOINT_POD, node_name="node-2"),
        svc("waypoint", "shop", selector=WAYPOINT_POD, ports=MESH_PORT, cluster_ip="10.96.0.9"),
        pod("web-1", "shop", ip="10.0.0.1",
            labels={"app": "web", "ambit.io/dataplane-mode": "ambient"}),
        svc("web", "shop", cluster_ip="10.96.0.1"),
        pod("client", "other", ip="10.0.1.1", node_name="node-1"),
    ]  # fmt: skip


def the(snapshot: MeshSnapshot, uid: str) -> Workload:
    found = snapshot.workload(uid)
    assert found is not None, uid
    return found


def test_a_waypoints_pod_is_in_the_mesh_whatever_its_namespace_says() -> None:
    snapshot = translate(shop(), version=1).snapshot
    waypoint = the(snapshot, "shop/waypoint-x1")
    assert (waypoint.protocol, waypoint.native_tunnel) == ("HBONE", True)
    assert waypoint.identity == SpiffeId("cluster.local", "shop", "default")
    web = the(snapshot, "shop/web-1")
    assert (web.protocol, web.native_tunnel) == ("HBONE", False)

    opted_out = {**WAYPOINT_POD, "ambit.io/dataplane-mode": "none"}
    objects = [*shop(), pod("waypoint-x1", "shop", ip="10.0.0.9", labels=opted_out)]
    assert the(translate(objects, version=1).snapshot, "shop/waypoint-x1").native_tunnel


def test_the_label_counts_only_for_a_waypoint_gateway_of_the_pods_namespace() -> None:
    other_class = [*shop(), gateway("waypoint", "shop", gateway_class="some-ingress")]
    plain = the(translate(other_class, version=1).snapshot, "shop/waypoint-x1")
    assert (plain.protocol, plain.native_tunnel) == ("TCP", False)

    elsewhere = [o for o in shop() if ref_of(o) != ("Gateway", "shop", "waypoint")]
    elsewhere.append(gateway("waypoint", "other"))
    assert not the(translate(elsewhere, version=1).snapshot, "shop/waypoint-x1").meshed


def test_a_gateway_that_comes_or_goes_changes_its_pods_incrementally() -> None:
    objects = {ref_of(o): o for o in shop()}
    translator = Translator()
    translator.apply(objects.values())
    gateway_ref: ObjectRef = ("Gateway", "shop", "waypoint")
    steps: list[tuple[list[m.K8sObject], list[ObjectRef], bool]] = [
        ([], [gateway_ref], False),
        ([gateway("waypoint", "shop")], [], True),
        ([gateway("waypoint", "shop", gateway_class="some-ingress")], [], False),
        ([gateway("waypoint", "shop", gateway_class="ambit-waypoint")], [], True),
    ]
    for upserts, removes, tunnel in steps:
        for ref in removes:
            objects.pop(ref)
        objects.update((ref_of(o), o) for o in upserts)
        result = translator.apply(upserts, removes)
        assert the(result.snapshot, "shop/waypoint-x1").native_tunnel is tunnel
        assert result == translate(objects.values(), version=result.snapshot.version)


def test_the_waypoint_runs_so_services_are_bound_and_ztunnel_plans_through_it() -> None:
    translation = translate(shop(), version=1)
    snapshot = translation.snapshot
    web = snapshot.service("shop/web")
    assert web is not None
    assert web.waypoint == "shop/waypoint"
    assert translation.problems == {}
    own = snapshot.service("shop/waypoint")
    assert own is not None
    assert own.waypoint is None, "a waypoint's Service never uses itself"
    plan = plan_outbound(snapshot, the(snapshot, "other/client"), "10.96.0.1", 80)
    assert isinstance(plan, ViaWaypoint)
    assert plan.dial == ("10.0.0.9", 15008)
    assert plan.expected_identity == SpiffeId("cluster.local", "shop", "default")


def test_the_json_form_carries_it() -> None:
    waypoint = the(translate(shop(), version=1).snapshot, "shop/waypoint-x1")
    assert waypoint.to_json()["native_tunnel"] is True
    assert Workload.from_json(waypoint.to_json()) == waypoint


class _Plane:
    def __init__(self, snapshot: MeshSnapshot) -> None:
        self.snapshot = snapshot


def test_no_node_may_have_a_waypoints_identity() -> None:
    objects = [*shop(ambient=True), pod("web-2", "shop", ip="10.0.0.2", node_name="node-2")]
    snapshot = translate(objects, version=1).snapshot
    authorizer = NodeAuthorizer(cast(Any, _Plane(snapshot)))
    shop_default = SpiffeId("cluster.local", "shop", "default")
    # web-2 (node-2) runs as shop/default too, and is captured: node-2 gets the identity.
    assert authorizer.may_issue("node-2", shop_default)
    alone = translate(shop(ambient=True), version=1).snapshot
    authorizer = NodeAuthorizer(cast(Any, _Plane(alone)))
    assert not authorizer.may_issue("node-2", shop_default), "only the waypoint has it"


async def test_ztunnel_never_captures_a_native_tunnel_pod() -> None:
    snapshot = translate(shop(), version=1).snapshot
    ztunnel = Ztunnel(
        node="node-2",
        certificates=cast(Any, None),  # never asked: nothing is captured
        netns_for=lambda w: None,
        telemetry=cast(Any, None),
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(ztunnel.run)
            await ztunnel.on_update(snapshot)
            assert ztunnel.ready() == (True, "0 pods captured")
            assert ztunnel.status()["pods"] == []
            nursery.cancel_scope.cancel()


def test_the_config_stream_knows_a_waypoint_by_its_gateway() -> None:
    snapshot = translate(shop(), version=1).snapshot
    current: list[MeshSnapshot | None] = [None]
    check = gateway_waypoint_authorizer(lambda: current[0])
    named = SpiffeId("cluster.local", "shop", "waypoint")
    assert check(named, "shop") is None, "Istio's default name, before any snapshot"
    edge = SpiffeId("cluster.local", "shop", "edge")
    assert "no waypoint Gateway 'edge'" in (check(edge, "shop") or "")
    current[0] = translate([*shop(), gateway("edge", "shop")], version=2).snapshot
    assert check(edge, "shop") is None
    assert "not of namespace 'other'" in (check(edge, "other") or "")
    current[0] = snapshot
    assert check(edge, "shop") is not None, "its Gateway is gone"
