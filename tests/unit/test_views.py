"""Each proxy's view of the mesh (k8s.views), pure functions of a snapshot: what a ztunnel
and a waypoint get, that a ztunnel's lookups answer as the whole snapshot would, and that
views of consecutive snapshots differ by what changed."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence

import pytest

from k8s.views import Views, waypoint_view, ztunnel_view
from mesh.constants import SYSTEM_NAMESPACE
from mesh.model import Authorization, Endpoint, MeshSnapshot, Resource, diff
from tests.builders import allow, deny, peer_auth, rule, service, snapshot, source, waypoint_ref
from tests.builders import workload as pod
from ztunnel.plan import plan_outbound

ROOT = SYSTEM_NAMESPACE

WEB = pod("web", "shop", ip="10.0.1.1", node="node-1")
DB = pod("db", "shop", ip="10.0.2.1", node="node-2")
WAYPOINT = pod("waypoint", "shop", ip="10.0.2.2", node="node-2", labels={})
PROBE = pod("probe", "tools", ip="10.0.1.2", node="node-1")
API = pod("api", "tools", ip="10.0.2.3", node="node-2")
OLD = pod("old", "legacy", ip="10.0.1.3", node="node-1", meshed=False)
PODS = (WEB, DB, WAYPOINT, PROBE, API, OLD)

SERVICES = (
    service("web", "shop", vip="10.96.0.1", backends=[WEB]),
    service("db", "shop", vip="10.96.0.2", backends=[DB]),
    service("waypoint", "shop", vip="10.96.0.3", ports={15008: 15008}, backends=[WAYPOINT]),
    # tools/api's traffic goes through shop's waypoint
    dataclasses.replace(
        service("api", "tools", vip="10.96.0.4", backends=[API]), waypoint="shop/waypoint"
    ),
    service("empty", "tools", vip="10.96.0.5"),  # no endpoints: refused, not passed through
)

ANY = rule([source(namespaces=["shop"])])
POLICIES = (
    allow("web-only", ANY, namespace="shop", selector={"app": "web"}),
    deny("db-only", ANY, namespace="shop", selector={"app": "db"}),
    allow("shop-wide", ANY, namespace="shop"),
    allow("probe", ANY, namespace="tools", selector={"app": "probe"}),
    deny("mesh-wide", ANY, namespace=ROOT),
    deny("root-db", ANY, namespace=ROOT, selector={"app": "db"}),
    allow("at-waypoint", ANY, namespace="shop", targets=[waypoint_ref()]),
    Authorization("audit", "shop", "AUDIT", None, (ANY,)),
    allow("old", ANY, namespace="legacy", selector={"app": "old"}),  # selects no meshed pod
)
PEER_AUTHENTICATIONS = (
    peer_auth("default", "STRICT", namespace=ROOT),
    peer_auth("root-db", "PERMISSIVE", namespace=ROOT, selector={"app": "db"}),
    peer_auth("db", "PERMISSIVE", namespace="shop", selector={"app": "db"}),
    peer_auth("default", "PERMISSIVE", namespace="tools"),
)
SNAP = snapshot(*PODS, *SERVICES, *POLICIES, *PEER_AUTHENTICATIONS, version=7)


def keys(entries: Sequence[Resource]) -> list[str]:
    return [e.key for e in entries]


# --- a ztunnel's view ------------------------------------------------------------------------


def test_a_ztunnel_gets_the_policies_of_its_own_pods_only() -> None:
    node_1 = ztunnel_view(SNAP, "node-1")
    assert keys(node_1.authorizations) == [
        f"{ROOT}/mesh-wide",
        "shop/shop-wide",
        "shop/web-only",
        "tools/probe",
    ]
    assert keys(node_1.peer_authentications) == [f"{ROOT}/default", "tools/default"]
    node_2 = ztunnel_view(SNAP, "node-2")
    assert keys(node_2.authorizations) == [
        f"{ROOT}/mesh-wide",
        f"{ROOT}/root-db",
        "shop/db-only",
        "shop/shop-wide",
    ]
    assert keys(node_2.peer_authentications) == [f"{ROOT}/default", "shop/db", "tools/default"]


def test_policies_meant_for_waypoints_never_reach_a_ztunnel() -> None:
    for node in ("node-1", "node-2"):
        view = ztunnel_view(SNAP, node)
        assert not [a.key for a in view.authorizations if a.for_waypoint]


def test_a_ztunnel_keeps_every_workload_and_service_as_the_snapshots_own_tuples() -> None:
    view = ztunnel_view(SNAP, "node-1")
    assert view.version == SNAP.version
    assert view.workloads is SNAP.workloads  # any pod may be dialled or be a source
    assert view.services is SNAP.services  # any VIP may be dialled, endpoints or not


def test_a_node_without_meshed_pods_gets_no_policies() -> None:
    lone = pod("lone", "legacy", ip="10.0.3.1", node="node-3", meshed=False)
    view = ztunnel_view(snapshot(*SNAP.resources(), lone, version=8), "node-3")
    assert view.authorizations == ()
    assert view.peer_authentications == ()
    assert len(view.workloads) == len(PODS) + 1


def test_a_view_that_keeps_every_policy_keeps_the_snapshots_tuple() -> None:
    snap = snapshot(WEB, allow("all", ANY, namespace="shop"), version=2)
    assert ztunnel_view(snap, "node-1").authorizations is snap.authorizations


def ztunnel_answers(snap: MeshSnapshot, node: str) -> list[object]:
    """Every lookup the ztunnel of ``node`` makes, with the answer ``snap`` gives: its pods'
    policies, PeerAuthentications and Services (inbound), any address's workload (an
    inbound source, a pod dialled), and the outbound plan from each of its pods to every
    address and port the mesh knows (ztunnel.plan, endpoints picked first and last)."""
    pods = [w for w in snap.workloads if w.node == node and w.meshed]
    addresses = [w.ip for w in snap.workloads] + [s.vip for s in snap.services] + ["192.0.2.1"]
    ports = sorted({p.port for s in snap.services for p in s.ports} | {8080, 9999})
    answers: list[object] = []
    for w in pods:
        answers += [snap.policies_for(w), snap.peer_authentication_for(w)]
        answers += [snap.service_of_endpoint(w.uid, port) for port in ports]
    answers += [snap.workload_by_ip(ip) for ip in addresses]
    for w, ip, port in itertools.product(pods, addresses, ports):
        for pick in (_first, _last):
            answers.append(plan_outbound(snap, w, ip, port, pick=pick))
    return answers


def _first(endpoints: Sequence[Endpoint]) -> Endpoint:
    return endpoints[0]


def _last(endpoints: Sequence[Endpoint]) -> Endpoint:
    return endpoints[-1]


@pytest.mark.parametrize("node", ["node-1", "node-2", "node-3"])
def test_every_lookup_a_ztunnel_makes_gets_the_snapshots_answer_from_its_view(node: str) -> None:
    assert ztunnel_answers(ztunnel_view(SNAP, node), node) == ztunnel_answers(SNAP, node)


def random_mesh(rng: random.Random, version: int) -> MeshSnapshot:
    """Pods on three nodes in three namespaces with random labels, Services over them, and
    policies and PeerAuthentications with random scopes, selectors and targets."""
    namespaces = ["a", "b", ROOT]
    labels = [{}, {"app": "x"}, {"app": "y"}, {"app": "x", "v": "1"}]
    pods = [
        pod(
            f"p{i}",
            rng.choice(namespaces),
            ip=f"10.1.0.{i + 1}",
            node=rng.choice(["n1", "n2", "n3"]),
            labels=rng.choice(labels),
            meshed=rng.random() < 0.8,
        )
        for i in range(24)
    ]
    services = [
        service(f"s{j}", rng.choice(namespaces), vip=f"10.96.1.{j + 1}",
                backends=rng.sample(pods, rng.randint(0, 3)))
        for j in range(6)
    ]  # fmt: skip
    policies: list[Resource] = []
    for k in range(16):
        selector = rng.choice([None, *labels[1:]])
        make = rng.choice([allow, deny])
        targets = [waypoint_ref()] if selector is None and rng.random() < 0.2 else []
        policies.append(
            make(f"r{k}", ANY, namespace=rng.choice(namespaces), selector=selector, targets=targets)
        )
    for k in range(6):
        mode = rng.choice(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"])
        selector = rng.choice([None, *labels[1:]])
        policies.append(
            peer_auth(f"m{k}", mode, namespace=rng.choice(namespaces), selector=selector)
        )
    return snapshot(*pods, *services, *policies, version=version)


def test_random_meshes_answer_every_ztunnel_lookup_the_same_from_each_nodes_view() -> None:
    rng = random.Random(10)
    left_out = 0
    for version in range(1, 40):
        snap = random_mesh(rng, version)
        for node in ("n1", "n2", "n3"):
            view = ztunnel_view(snap, node)
            assert ztunnel_answers(view, node) == ztunnel_answers(snap, node)
            assert not [a for a in view.authorizations if a.for_waypoint]
            left_out += len(snap.authorizations) - len(view.authorizations)
            left_out += len(snap.peer_authentications) - len(view.peer_authentications)
    assert left_out > 500  # the views do leave policies out (912 with this seed)


# --- a waypoint's view -----------------------------------------------------------------------


def test_a_waypoint_gets_its_namespace_and_the_services_bound_to_it() -> None:
    view = waypoint_view(SNAP, "shop")
    assert view.version == SNAP.version
    assert keys(view.services) == ["shop/db", "shop/waypoint", "shop/web", "tools/api"]
    # shop's pods, and tools/api's endpoint: the waypoint routes api's traffic to it
    assert keys(view.workloads) == ["shop/db", "shop/waypoint", "shop/web", "tools/api"]
    assert keys(view.authorizations) == [
        f"{ROOT}/mesh-wide",
        f"{ROOT}/root-db",
        "shop/at-waypoint",
        "shop/audit",
        "shop/db-only",
        "shop/shop-wide",
        "shop/web-only",
    ]
    assert keys(view.peer_authentications) == [f"{ROOT}/default", f"{ROOT}/root-db", "shop/db"]


def test_a_waypoint_of_another_namespace_gets_nothing_of_shop() -> None:
    view = waypoint_view(SNAP, "tools")
    assert keys(view.workloads) == ["tools/api", "tools/probe"]
    assert keys(view.services) == ["tools/api", "tools/empty"]
    assert keys(view.authorizations) == [f"{ROOT}/mesh-wide", f"{ROOT}/root-db", "tools/probe"]
    assert not [a for a in view.authorizations if a.namespace == "shop"]


def test_a_waypoint_of_the_root_namespace_gets_each_root_policy_once() -> None:
    view = waypoint_view(SNAP, ROOT)
    assert keys(view.authorizations) == [f"{ROOT}/mesh-wide", f"{ROOT}/root-db"]
    assert view.workloads == ()


# --- views of consecutive snapshots ----------------------------------------------------------


def replaced(snap: MeshSnapshot, version: int, *new: Resource) -> MeshSnapshot:
    """``snap`` at ``version`` with ``new`` entries in place of those with their keys; the
    others stay the same objects, as the control plane's translator keeps them."""
    changed = {(r.kind, r.key): r for r in new}
    entries = [changed.pop((r.kind, r.key), r) for r in snap.resources()]
    return snapshot(*entries, *changed.values(), version=version)


def test_a_change_of_another_nodes_policy_leaves_a_ztunnels_view_unchanged() -> None:
    later = replaced(SNAP, 8, deny("db-only", ANY, namespace="shop", selector={"app": "other"}))
    assert diff(ztunnel_view(SNAP, "node-1"), ztunnel_view(later, "node-1")).upserts == ()
    assert diff(ztunnel_view(SNAP, "node-1"), ztunnel_view(later, "node-1")).removes == ()
    node_2 = diff(ztunnel_view(SNAP, "node-2"), ztunnel_view(later, "node-2"))
    assert (node_2.upserts, node_2.removes) == ((), (("authorization", "shop/db-only"),))


def test_a_relabelled_pod_brings_the_policies_that_now_select_it() -> None:
    probe = pod("probe", "tools", ip="10.0.1.2", node="node-1", labels={"app": "probe", "x": "1"})
    selects = allow("x", ANY, namespace="tools", selector={"x": "1"})
    later = replaced(SNAP, 8, probe, selects)
    delta = diff(ztunnel_view(SNAP, "node-1"), ztunnel_view(later, "node-1"))
    assert [(r.kind, r.key) for r in delta.upserts] == [
        ("authorization", "tools/x"),
        ("workload", "tools/probe"),
    ]
    # node-2 has no pod it selects: it sees the pod's new labels only
    delta = diff(ztunnel_view(SNAP, "node-2"), ztunnel_view(later, "node-2"))
    assert [(r.kind, r.key) for r in delta.upserts] == [("workload", "tools/probe")]


def test_views_of_one_snapshot_are_computed_once() -> None:
    views = Views(SNAP)
    assert views.get(("ztunnel", "node-1")) is views.get(("ztunnel", "node-1"))
    assert views.get(("waypoint", "shop")) is views.get(("waypoint", "shop"))
    with pytest.raises(ValueError, match="no view for role 'sidecar'"):
        views.get(("sidecar", "x"))  # type: ignore[arg-type]


def test_views_carried_over_from_the_previous_snapshot_are_those_of_the_new_one() -> None:
    previous = Views(SNAP)
    for node in ("node-1", "node-2"):
        previous.get(("ztunnel", node))
    relabelled = pod("probe", "tools", ip="10.0.1.2", node="node-1", labels={"app": "db"})
    moved = pod("web", "shop", ip="10.0.1.1", node="node-2")
    workloads = tuple({WEB: moved, PROBE: relabelled}.get(w, w) for w in SNAP.workloads)
    same_policies = dataclasses.replace(SNAP, version=8, workloads=workloads)
    assert same_policies.authorizations is SNAP.authorizations
    other_policies = replaced(same_policies, 9, allow("web-only", namespace="shop"))
    for later in (same_policies, other_policies):
        views = Views(later, previous=previous)
        for node in ("node-1", "node-2"):
            assert views.get(("ztunnel", node)) == ztunnel_view(later, node)
        previous = views
    # node-1 now runs only probe, which root-db selects by its new label
    assert keys(ztunnel_view(same_policies, "node-1").authorizations) == [
        f"{ROOT}/mesh-wide",
        f"{ROOT}/root-db",
    ]


def test_a_view_keeps_the_collections_it_does_not_restrict() -> None:
    """A waypoint compiles routes and binds JWT rules from its view: they must be there."""
    from mesh.model_l7 import Gateway, HttpRoute, Listener, ParentRef
    from tests.builders import snapshot as make_snapshot

    route = HttpRoute("r", "shop", (ParentRef("", "Service", "web"),))
    gateway = Gateway("waypoint", "shop", "ambit-waypoint", (Listener("mesh", 15008, "HBONE"),))
    snap = make_snapshot(route, gateway)
    view = waypoint_view(snap, "shop")
    assert view.http_routes == (route,)
    assert view.gateways == (gateway,)
    assert ztunnel_view(snap, "node-1").http_routes == (route,)


def test_a_waypoints_view_has_the_services_its_routes_send_to_in_other_namespaces() -> None:
    from mesh.model_l7 import BackendRef, Filter, HttpRoute, HttpRule, Mirror, ParentRef
    from tests.builders import service as make_service
    from tests.builders import snapshot as make_snapshot
    from tests.builders import workload as make_workload

    shop_pod = make_workload("web-1", "shop", ip="10.0.0.1")
    api_pod = make_workload("api-1", "api", ip="10.0.0.2")
    audit_pod = make_workload("audit-1", "audit", ip="10.0.0.3")
    web = make_service("web", "shop", vip="10.96.0.1", backends=[shop_pod])
    api = make_service("api", "api", vip="10.96.0.2", backends=[api_pod])
    audit = make_service("audit", "audit", vip="10.96.0.3", backends=[audit_pod])
    other = make_service("other", "audit", vip="10.96.0.4")
    mirror = Filter("RequestMirror", mirror=Mirror(BackendRef("audit", 80, namespace="audit")))
    route = HttpRoute(
        "web", "shop", (ParentRef("", "Service", "web"),),
        rules=(HttpRule(backends=(BackendRef("api", 80, namespace="api"),), filters=(mirror,)),),
    )  # fmt: skip
    snap = make_snapshot(web, api, audit, other, shop_pod, api_pod, audit_pod, route)
    view = waypoint_view(snap, "shop")
    assert [s.key for s in view.services] == ["api/api", "audit/audit", "shop/web"]
    assert {w.uid for w in view.workloads} == {"shop/web-1", "api/api-1", "audit/audit-1"}
