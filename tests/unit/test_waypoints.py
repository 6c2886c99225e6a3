"""Translation of the L7 kinds: which Gateways are waypoints, which Services and workloads
go through one (``use-waypoint`` labels on Namespaces, Services and Pods, ``none`` to opt
out), what is reported when the waypoint is missing or not running, routes and
RequestAuthentications carried as read, and the problems of their references."""

from __future__ import annotations

import dataclasses
import textwrap

from k8s import manifests as m
from k8s.controlplane import waypoint_condition, write_conditions
from k8s.store import ObjectRef, ObjectStore, ref_of
from k8s.translate import Translation, Translator, translate
from mesh.model import MeshSnapshot
from mesh.model_l7 import (
    BackendRef,
    Filter,
    GrpcMatch,
    GrpcRule,
    HeaderMatch,
    HttpMatch,
    HttpRule,
    Listener,
    ParentRef,
)
from tests.k8s_builders import gateway, ns, pod, svc
from ztunnel.plan import Direct, Refused, ViaWaypoint, plan_outbound

USE = "istio.io/use-waypoint"
FOR = "istio.io/waypoint-for"
WAYPOINT_POD = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
MESH_PORT = (m.ServicePortSpec(port=15008, target_port=15008),)


def shop(**namespace_labels: str) -> list[m.K8sObject]:
    """Namespace shop (ambient; ``namespace_labels`` added), its waypoint running, and a
    web Service with two pods; a client in namespace other."""
    return [
        ns("shop", labels=namespace_labels),
        ns("other"),
        gateway("waypoint", "shop"),
        pod("waypoint-1", "shop", ip="10.0.0.9", labels=WAYPOINT_POD),
        svc("waypoint", "shop", selector=WAYPOINT_POD, ports=MESH_PORT, cluster_ip="10.96.0.9"),
        pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web"}),
        pod("web-2", "shop", ip="10.0.0.2", labels={"app": "web"}),
        svc("web", "shop", cluster_ip="10.96.0.1"),
        pod("client", "other", ip="10.0.1.1"),
    ]


def with_labels(objects: list[m.K8sObject], ref: ObjectRef, **labels: str) -> list[m.K8sObject]:
    out = []
    for obj in objects:
        if ref_of(obj) == ref:
            obj = dataclasses.replace(obj, labels=obj.labels + tuple(labels.items()))
        out.append(obj)
    return out


def waypoints(snapshot: MeshSnapshot) -> dict[str, str | None]:
    """Service and workload keys -> their waypoint."""
    out: dict[str, str | None] = {f"svc {s.key}": s.waypoint for s in snapshot.services}
    out.update((f"pod {w.uid}", w.waypoint) for w in snapshot.workloads)
    return out


def reasons(translation: Translation) -> dict[ObjectRef, list[str]]:
    return {ref: [p.reason for p in found] for ref, found in translation.problems.items()}


WEB = ("Service", "shop", "web")
SHOP = ("Namespace", "", "shop")


def test_a_namespace_label_sends_its_services_through_the_waypoint() -> None:
    result = translate(shop(**{USE: "waypoint"}), version=1)
    assert waypoints(result.snapshot) == {
        "svc shop/waypoint": None,  # a waypoint's own Service never goes through it
        "svc shop/web": "shop/waypoint",
        "pod other/client": None,
        "pod shop/waypoint-1": None,
        "pod shop/web-1": None,  # waypoint-for: service (the default): not workloads
        "pod shop/web-2": None,
    }
    assert [g.key for g in result.snapshot.gateways] == ["shop/waypoint"]
    assert result.snapshot.gateways[0].for_traffic == "service"
    assert result.problems == {}


def test_a_waypoint_for_all_traffic_takes_the_workloads_too_but_never_its_own_pods() -> None:
    objects = with_labels(
        shop(**{USE: "waypoint"}), ("Gateway", "shop", "waypoint"), **{FOR: "all"}
    )
    snapshot = translate(objects, version=1).snapshot
    assert waypoints(snapshot) == {
        "svc shop/waypoint": None,
        "svc shop/web": "shop/waypoint",
        "pod other/client": None,
        "pod shop/waypoint-1": None,
        "pod shop/web-1": "shop/waypoint",
        "pod shop/web-2": "shop/waypoint",
    }


def test_none_opts_a_service_or_a_pod_out_of_the_namespace_waypoint() -> None:
    objects = with_labels(
        shop(**{USE: "waypoint"}), ("Gateway", "shop", "waypoint"), **{FOR: "all"}
    )
    objects = with_labels(objects, WEB, **{USE: "none"})
    objects = with_labels(objects, ("Pod", "shop", "web-2"), **{USE: "none"})
    result = translate(objects, version=1)
    assert waypoints(result.snapshot)["svc shop/web"] is None
    assert waypoints(result.snapshot)["pod shop/web-1"] == "shop/waypoint"
    assert waypoints(result.snapshot)["pod shop/web-2"] is None
    assert result.problems == {}


def test_an_object_label_names_a_waypoint_in_its_own_or_another_namespace() -> None:
    objects = [
        *shop(),
        ns("infra"),
        # Its listener admits every namespace: a waypoint of another namespace needs that.
        dataclasses.replace(gateway("edge", "infra"), listeners=(
            Listener("mesh", 15008, "HBONE", allowed_from="All"),)),
        pod("edge-1", "infra", ip="10.0.2.1", labels={"gateway": "edge"}),
        svc("edge", "infra", selector={"gateway": "edge"}, ports=MESH_PORT, cluster_ip="10.96.2.1"),
        svc("api", "shop", selector={"app": "web"}, cluster_ip="10.96.0.2",
            labels={USE: "edge", "istio.io/use-waypoint-namespace": "infra"}),
        svc("db", "shop", selector={"app": "web"}, cluster_ip="10.96.0.3",
            labels={"ambit.io/use-waypoint": "waypoint", USE: "edge"}),
    ]  # fmt: skip
    result = translate(objects, version=1)
    assert waypoints(result.snapshot)["svc shop/api"] == "infra/edge"
    assert waypoints(result.snapshot)["svc shop/db"] == "shop/waypoint", "ambit's label counts"
    assert waypoints(result.snapshot)["svc shop/web"] is None, "no label, none in the namespace"
    assert result.problems == {}


def test_a_missing_waypoint_is_a_problem_and_its_services_stay_bound_to_fail_closed() -> None:
    result = translate(shop(**{USE: "nope"}), version=1)
    found = waypoints(result.snapshot)
    assert found["svc shop/web"] == "shop/nope"  # ztunnel refuses: no silent bypass
    assert found["pod shop/web-1"] is None  # waypoint-for is unknown: workloads are not bound
    assert reasons(result) == {
        SHOP: ["WaypointNotFound"],
        ("Service", "shop", "waypoint"): ["WaypointNotFound"],
        WEB: ["WaypointNotFound"],
    }
    (problem,) = result.problems[WEB]
    assert "uses waypoint shop/nope, but there is no Gateway shop/nope" in problem.message
    client = result.snapshot.workload("other/client")
    assert client is not None
    refused = plan_outbound(result.snapshot, client, "10.96.0.1", 80)
    assert isinstance(refused, Refused)
    assert "waypoint shop/nope" in refused.detail


def test_a_gateway_of_another_class_is_no_waypoint() -> None:
    objects = [o for o in shop() if ref_of(o)[0] != "Gateway"]
    objects.append(gateway("waypoint", "shop", gateway_class="nginx"))
    objects = with_labels(objects, WEB, **{USE: "waypoint"})
    result = translate(objects, version=1)
    assert result.snapshot.gateways == ()
    assert waypoints(result.snapshot)["svc shop/web"] == "shop/waypoint"  # refused, not bypassed
    (problem,) = result.problems[WEB]
    assert problem.reason == "WaypointNotFound"
    assert "Gateway shop/waypoint has class 'nginx', not istio-waypoint or ambit-waypoint" in (
        problem.message
    )


def test_a_waypoint_without_a_running_pod_keeps_its_services_refused_until_it_runs() -> None:
    objects = with_labels(shop(), WEB, **{USE: "waypoint"})
    translator = Translator()
    ready = translator.apply(objects)
    assert waypoints(ready.snapshot)["svc shop/web"] == "shop/waypoint"

    stopped = translator.apply(removes=[("Pod", "shop", "waypoint-1")])
    assert waypoints(stopped.snapshot)["svc shop/web"] == "shop/waypoint"  # fails closed
    client = stopped.snapshot.workload("other/client")
    assert client is not None
    refused = plan_outbound(stopped.snapshot, client, "10.96.0.1", 80)
    assert isinstance(refused, Refused)
    assert "no ready pod" in refused.detail
    assert reasons(stopped) == {WEB: ["WaypointNotReady"]}
    assert stopped.snapshot == translate(translator.objects().values(), version=2).snapshot

    unready = pod("waypoint-1", "shop", ip="10.0.0.9", labels=WAYPOINT_POD, ready=False)
    assert reasons(translator.apply([unready])) == {WEB: ["WaypointNotReady"]}

    running = translator.apply([pod("waypoint-1", "shop", ip="10.0.0.9", labels=WAYPOINT_POD)])
    assert waypoints(running.snapshot)["svc shop/web"] == "shop/waypoint"
    assert running.problems == {}


def test_a_waypoint_that_does_not_take_that_traffic() -> None:
    objects = with_labels(shop(**{USE: "waypoint"}), ("Gateway", "shop", "waypoint"),
                          **{FOR: "workload"})  # fmt: skip
    inherited = translate(objects, version=1)
    assert waypoints(inherited.snapshot)["svc shop/web"] is None
    assert waypoints(inherited.snapshot)["pod shop/web-1"] == "shop/waypoint"
    assert inherited.problems == {}, "the namespace's waypoint just does not take Services"
    named = translate(with_labels(objects, WEB, **{USE: "waypoint"}), version=1)
    assert reasons(named) == {WEB: ["WaypointTrafficMismatch"]}


def test_incremental_changes_of_gateways_and_labels_equal_a_full_translation() -> None:
    translator = Translator()
    objects = {ref_of(o): o for o in shop()}
    translator.apply(objects.values())
    changes: list[tuple[list[m.K8sObject], list[ObjectRef]]] = [
        ([ns("shop", labels={USE: "waypoint"})], []),
        ([], [("Gateway", "shop", "waypoint")]),
        ([gateway("waypoint", "shop", labels={FOR: "all"})], []),
        ([pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web", USE: "none"})], []),
        ([gateway("waypoint", "shop", gateway_class="other")], []),
        ([gateway("waypoint", "shop", labels={FOR: "workload"})], []),
        ([svc("web", "shop", cluster_ip="10.96.0.1", labels={USE: "waypoint"})], []),
        ([ns("shop", labels={USE: "none"})], []),
        ([], [("Service", "shop", "waypoint")]),
    ]
    seen = set()
    for upserts, removes in changes:
        for ref in removes:
            objects.pop(ref)
        objects.update((ref_of(o), o) for o in upserts)
        result = translator.apply(upserts, removes)
        full = translate(objects.values(), version=result.snapshot.version)
        assert result == full
        seen.add(tuple(sorted(waypoints(result.snapshot).items(), key=str)))
    assert len(seen) >= 5, "the changes really change the waypoints"


def test_ztunnel_plans_through_the_waypoint_it_is_given() -> None:
    snapshot = translate(shop(**{USE: "waypoint"}), version=1).snapshot
    client = snapshot.workload("other/client")
    assert client is not None
    plan = plan_outbound(snapshot, client, "10.96.0.1", 80, pick=lambda e: e[0])
    assert isinstance(plan, ViaWaypoint)
    assert plan.dial == ("10.0.0.9", 15008)
    assert plan.authority == "10.96.0.1:80"
    opted_out = translate(shop(**{USE: "none"}), version=1).snapshot
    assert isinstance(plan_outbound(opted_out, client, "10.96.0.1", 80), Direct)


def test_routes_and_request_authentications_are_carried_with_their_reference_problems() -> None:
    route = m.HTTPRoute(
        name="split",
        namespace="shop",
        creation_timestamp="2026-12-06T10:00:00Z",
        parent_refs=(ParentRef("", "Service", "web"), ParentRef("", "Service", "gone"),
                     ParentRef("example.com", "Mesh", "m")),
        rules=(HttpRule(backends=(BackendRef("web", 80), BackendRef("web-v2", 80))),),
    )  # fmt: skip
    (auth,) = m.loads(
        textwrap.dedent(
            """
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: jwt, namespace: shop}
            spec:
              targetRefs: [{kind: Service, name: web}]
              jwtRules: [{issuer: https://issuer.example.com}]
            """
        )
    )
    translator = Translator()
    first = translator.apply([*shop(), route, auth])
    (carried,) = first.snapshot.http_routes
    assert (carried.key, carried.parents, carried.rules) == ("shop/split", route.parent_refs,
                                                             route.rules)  # fmt: skip
    assert carried.created == "2026-12-06T10:00:00Z"
    assert [a.key for a in first.snapshot.request_authentications] == ["shop/jwt"]
    assert first.snapshot.request_authentications[0].target_refs[0].name == "web"
    assert [p.message for p in first.problems[("HTTPRoute", "shop", "split")]] == [
        "parent example.com/Mesh m: ambit attaches routes to Services",
        "parent Service shop/gone not found; the route does not apply to it",
        "backend Service shop/web-v2 not found; requests to it fail (500)",
    ]
    assert reasons(first)[("HTTPRoute", "shop", "split")] == [
        "NoMatchingParent", "NoMatchingParent", "BackendNotFound",
    ]  # fmt: skip
    second = translator.apply([svc("web-v2", "shop", cluster_ip="10.96.0.4")])
    assert reasons(second) == {
        ("HTTPRoute", "shop", "split"): ["NoMatchingParent", "NoMatchingParent"]
    }
    assert second.snapshot.http_routes[0] is carried, "the route did not change"
    third = translator.apply(removes=[("HTTPRoute", "shop", "split")])
    assert third.problems == {}
    assert third.snapshot.http_routes == ()


def test_values_the_waypoint_will_not_act_on_are_unsupported_value_problems() -> None:
    bad_path = HttpMatch("RegularExpression", "/(a+)+")
    bad_header = HttpMatch(headers=(HeaderMatch("x-id", r"(\d)\1", "RegularExpression"),))
    good = HttpMatch("RegularExpression", "/v[0-9]+/.*")
    route = m.HTTPRoute(
        name="odd",
        namespace="shop",
        parent_refs=(ParentRef("", "Service", "web"),),
        rules=(
            HttpRule((bad_path, bad_header, good), backends=(BackendRef("web", 80),)),
            HttpRule(filters=(Filter("ExtensionRef"),), backends=(BackendRef("web", 80),)),
        ),
    )
    grpc = m.GRPCRoute(
        name="rpc",
        namespace="shop",
        parent_refs=(ParentRef("", "Service", "web"),),
        rules=(GrpcRule((GrpcMatch("RegularExpression", "(?=x)y"),)),),
    )
    result = translate([*shop(), route, grpc], version=1)
    messages = [p.message for p in result.problems[("HTTPRoute", "shop", "odd")]]
    assert [p.reason for p in result.problems[("HTTPRoute", "shop", "odd")]] == [
        "UnsupportedValue"
    ] * 3
    assert "nested unbounded repetition" in messages[0]
    assert messages[0].endswith("the route is not accepted")
    assert "backreference" in messages[1]
    assert messages[2] == "rule 1: ambit does not apply ExtensionRef filters; the rule answers 500"
    (rpc,) = result.problems[("GRPCRoute", "shop", "rpc")]
    assert (rpc.reason, "lookahead" in rpc.message) == ("UnsupportedValue", True)


def test_an_unknown_waypoint_for_value_is_a_problem_on_the_gateway() -> None:
    objects = with_labels(shop(), ("Gateway", "shop", "waypoint"), **{FOR: "everything"})
    result = translate(objects, version=1)
    assert result.snapshot.gateways[0].for_traffic == "service"
    assert reasons(result) == {("Gateway", "shop", "waypoint"): ["InvalidWaypointFor"]}


def test_services_show_whether_they_are_bound_to_their_waypoint() -> None:
    store = ObjectStore()
    objects = with_labels(
        shop(**{USE: "waypoint"}), ("Service", "shop", "waypoint"), **{USE: "none"}
    )
    objects.append(svc("api", "shop", selector={"app": "web"}, cluster_ip="10.96.0.5",
                       labels={USE: "missing"}))  # fmt: skip
    for obj in objects:
        store.put(obj)
    write_conditions(store, translate(store.objects(), version=1))

    def bound(name: str) -> list[tuple[str, str, str]]:
        entry = store.get(("Service", "shop", name))
        assert entry is not None
        return [(c.type, c.status, c.reason) for c in entry.conditions]

    assert bound("web") == [("ambit.io/WaypointBound", "True", "Bound")]
    assert bound("api") == [("ambit.io/WaypointBound", "False", "WaypointNotFound")]
    assert bound("waypoint") == []
    assert waypoint_condition((), None) == []


def test_no_status_for_gateways_of_a_class_istio_claims() -> None:
    """With Istio's own ``istio-waypoint`` GatewayClass on the cluster, Istio reports on
    those Gateways; ambit writes them no condition (nor the class)."""
    store = ObjectStore()
    for obj in shop(**{USE: "waypoint"}):
        store.put(obj)
    write_conditions(store, translate(store.objects(), version=1))
    entry = store.get(("Gateway", "shop", "waypoint"))
    assert entry is not None
    assert [c.type for c in entry.conditions] == ["Accepted", "Programmed"]
    store.put(m.GatewayClass(name="istio-waypoint", controller_name="istio.io/mesh-controller"))
    write_conditions(store, translate(store.objects(), version=2))
    for ref in (("Gateway", "shop", "waypoint"), ("GatewayClass", "", "istio-waypoint")):
        found = store.get(ref)
        assert found is not None
        assert found.conditions == ()
