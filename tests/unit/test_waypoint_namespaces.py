"""``use-waypoint-namespace``: a waypoint of another namespace is used only where its
listeners' ``allowedRoutes`` admit the user's namespace; otherwise the object is not bound
to it, says so (``WaypointNotAllowed``), and its traffic fails closed: ztunnel refuses it
and the waypoint does not serve it. Incremental translation gives what a full one does."""

from __future__ import annotations

import dataclasses

from k8s import manifests as m
from k8s.controlplane import write_conditions
from k8s.store import ObjectStore
from k8s.translate import Translation, Translator, translate
from mesh.model_l7 import Listener, refused_waypoint
from tests.k8s_builders import gateway, ns, pod, svc
from waypoint.proxy import WaypointProxy
from ztunnel.plan import Refused, ViaWaypoint, plan_outbound

USE = {"istio.io/use-waypoint": "edge", "istio.io/use-waypoint-namespace": "infra"}
EDGE = {"gateway": "edge"}
MESH_PORT = (m.ServicePortSpec(port=15008, target_port=15008),)
API = ("Service", "shop", "api")


def edge(**allowed: object) -> m.Gateway:
    listener = Listener("mesh", 15008, "HBONE", **allowed)  # type: ignore[arg-type]
    return dataclasses.replace(gateway("edge", "infra"), listeners=(listener,))


def objects(waypoint: m.Gateway, *, team: str = "blue") -> list[m.K8sObject]:
    """Waypoint infra/edge (running), and in namespace shop (labelled ``team``) a Service
    api that names it, and a client."""
    return [
        ns("infra"),
        ns("shop", labels={"team": team}),
        waypoint,
        pod("edge-1", "infra", ip="10.0.2.1", labels=EDGE),
        svc("edge", "infra", selector=EDGE, ports=MESH_PORT, cluster_ip="10.96.2.1"),
        pod("api-1", "shop", ip="10.0.0.1", labels={"app": "api"}),
        svc("api", "shop", cluster_ip="10.96.0.1", labels=USE),
        pod("client", "shop", ip="10.0.0.2"),
    ]


def bound(result: Translation) -> str | None:
    service = result.snapshot.service("shop/api")
    assert service is not None
    return service.waypoint


def reasons(result: Translation) -> list[str]:
    return [p.reason for p in result.problems.get(API, ())]


def test_a_listener_from_same_refuses_other_namespaces_and_the_traffic_fails_closed() -> None:
    result = translate(objects(edge()), version=1)  # allowedRoutes from: Same, the default
    assert bound(result) == refused_waypoint("infra/edge")
    assert reasons(result) == ["WaypointNotAllowed"]
    (problem,) = result.problems[API]
    assert "uses waypoint infra/edge, whose listeners do not admit this namespace" in (
        problem.message
    )
    client = result.snapshot.workload("shop/client")
    assert client is not None
    plan = plan_outbound(result.snapshot, client, "10.96.0.1", 80)
    assert isinstance(plan, Refused), "never sent around the waypoint"
    assert "does not admit its namespace" in plan.detail
    # The waypoint itself would not serve it either: it is not bound to infra/edge.
    proxy = WaypointProxy.__new__(WaypointProxy)
    proxy.key = "infra/edge"
    refused = proxy.destination(result.snapshot, "10.96.0.1", 80)
    assert refused == "service shop/api is not bound to waypoint infra/edge"


def test_from_all_or_a_matching_selector_admits_the_namespace() -> None:
    for waypoint in (
        edge(allowed_from="All"),
        edge(allowed_from="Selector", namespace_selector=(("team", "blue"),)),
    ):
        result = translate(objects(waypoint), version=1)
        assert bound(result) == "infra/edge"
        assert reasons(result) == []
        client = result.snapshot.workload("shop/client")
        assert client is not None
        assert isinstance(plan_outbound(result.snapshot, client, "10.96.0.1", 80), ViaWaypoint)
    selected = edge(allowed_from="Selector", namespace_selector=(("team", "red"),))
    assert reasons(translate(objects(selected), version=1)) == ["WaypointNotAllowed"]


def test_the_service_condition_says_waypoint_not_allowed() -> None:
    store = ObjectStore()
    for obj in objects(edge()):
        store.put(obj)
    write_conditions(store, translate(store.objects(), version=1))
    entry = store.get(API)
    assert entry is not None
    assert [(c.type, c.status, c.reason) for c in entry.conditions] == [
        ("ambit.io/WaypointBound", "False", "WaypointNotAllowed")
    ]


def test_relabelling_the_namespace_or_changing_the_listener_rebinds_incrementally() -> None:
    selector = edge(allowed_from="Selector", namespace_selector=(("team", "blue"),))
    translator = Translator()
    first = translator.apply(objects(selector, team="red"))
    assert (bound(first), reasons(first)) == (
        refused_waypoint("infra/edge"),
        ["WaypointNotAllowed"],
    )
    steps: list[list[m.K8sObject]] = [
        [ns("shop", labels={"team": "blue"})],  # the namespace now matches the selector
        [edge()],  # the listener now admits only infra
        [edge(allowed_from="All")],
        [ns("shop", labels={"team": "red"})],  # from: All does not look at labels
    ]
    current = {(type(o).__name__, o.namespace, o.name): o for o in objects(selector, team="red")}
    expected = ["infra/edge", refused_waypoint("infra/edge"), "infra/edge", "infra/edge"]
    for step, wanted in zip(steps, expected, strict=True):
        result = translator.apply(step)
        current.update({(type(o).__name__, o.namespace, o.name): o for o in step})
        full = translate(current.values(), version=result.snapshot.version)
        assert result == full
        assert bound(result) == wanted
