"""Route status as Gateway API controllers report it: each reason of ``Accepted`` and
``ResolvedRefs`` from translation to the conditions written on the route, one bad route
reported on itself while its neighbours stay Accepted, the waypoint acting on the same
answers, and how ``ambit get httproutes`` shows them."""

from __future__ import annotations

import dataclasses

import pytest

from ambit import tables
from k8s import manifests as m
from k8s.controlplane import gateway_api_conditions, write_conditions
from k8s.status_docs import served_json
from k8s.store import ObjectRef, ObjectStore, ref_of
from k8s.translate import Translation, translate
from mesh.model_l7 import (
    BackendRef,
    Filter,
    GrpcRule,
    HttpMatch,
    HttpRule,
    Listener,
    ParentRef,
)
from tests.k8s_builders import gateway, ns, pod, svc
from waypoint.routes import compile_snapshot

WEB = ParentRef("", "Service", "web")
WAYPOINT = ParentRef("gateway.networking.k8s.io", "Gateway", "waypoint")
PORTS = (m.ServicePortSpec(port=80, target_port=8080, name="http"),)


def shop(*more: m.K8sObject) -> list[m.K8sObject]:
    """Namespaces shop and other; Service web (port 80, ``http``) with a pod; a waypoint."""
    return [
        ns("shop"),
        ns("other", labels={"team": "blue"}),
        pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web"}),
        svc("web", "shop", cluster_ip="10.96.0.1", ports=PORTS),
        gateway("waypoint", "shop"),
        *more,
    ]


def http(name: str, *, namespace: str = "shop", parents: tuple[ParentRef, ...] = (WEB,),
         rule: HttpRule | None = None) -> m.HTTPRoute:  # fmt: skip
    rule = rule or HttpRule(backends=(BackendRef("web", 80, namespace="shop"),))
    return m.HTTPRoute(name=name, namespace=namespace, parent_refs=parents, rules=(rule,))


def conditions(result: Translation, ref: ObjectRef) -> dict[str, tuple[str, str]]:
    (obj,) = [o for o in current if ref_of(o) == ref]
    found = gateway_api_conditions(obj, result.problems.get(ref, ()), result.snapshot)
    return {c.type: (c.status, c.reason) for c in found}


current: list[m.K8sObject] = []


def status(*objects: m.K8sObject, of: str = "r") -> dict[str, tuple[str, str]]:
    """The Accepted and ResolvedRefs of route ``of`` (an HTTPRoute, else a GRPCRoute) of
    namespace shop (or other), among ``shop()`` and ``objects``."""
    current[:] = shop(*objects)
    result = translate(current, version=1)
    (ref,) = [ref_of(o) for o in objects if o.name == of]
    return conditions(result, ref)


OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_a_route_whose_parent_and_backends_are_there_is_accepted_and_resolved() -> None:
    assert status(http("r")) == OK
    by_port = ParentRef("", "Service", "web", port=80)
    by_name = ParentRef("", "Service", "web", section_name="http")
    assert status(http("r", parents=(by_port, by_name))) == OK


@pytest.mark.parametrize(
    "parent",
    [
        ParentRef("", "Service", "gone"),  # no such Service
        ParentRef("", "Service", "web", port=81),  # no such port
        ParentRef("", "Service", "web", section_name="grpc"),  # no port of that name
        ParentRef("example.com", "Mesh", "m"),  # a kind ambit attaches nothing to
        ParentRef("gateway.networking.k8s.io", "Gateway", "gone"),
        ParentRef("gateway.networking.k8s.io", "Gateway", "waypoint", section_name="nope"),
        ParentRef("gateway.networking.k8s.io", "Gateway", "waypoint", port=80),
    ],
)
def test_a_parent_that_matches_nothing_is_no_matching_parent(parent: ParentRef) -> None:
    found = status(http("r", parents=(parent,)))
    assert found["Accepted"] == ("False", "NoMatchingParent")


def with_listener(**allowed: object) -> m.Gateway:
    listener = Listener("mesh", 15008, "HBONE", **allowed)  # type: ignore[arg-type]
    return dataclasses.replace(gateway("waypoint", "shop"), listeners=(listener,))


def test_listeners_that_do_not_admit_the_route_are_not_allowed_by_listeners() -> None:
    parent = dataclasses.replace(WAYPOINT, namespace="shop")
    # from: Same (the default) admits routes of shop only.
    found = status(http("r", namespace="other", parents=(parent,)))
    assert found["Accepted"] == ("False", "NotAllowedByListeners")
    red = with_listener(allowed_from="Selector", namespace_selector=(("team", "red"),))
    found = status(red, http("r", namespace="other", parents=(parent,)))
    assert found["Accepted"] == ("False", "NotAllowedByListeners")
    tcp_only = with_listener(allowed_from="All", allowed_kinds=())
    tcp_only = dataclasses.replace(
        tcp_only, listeners=(Listener("tcp", 9000, "TCP", "", "", "All"),)
    )
    assert status(tcp_only, http("r", parents=(WAYPOINT,)))["Accepted"] == (
        "False", "NotAllowedByListeners",
    )  # fmt: skip


def test_a_route_a_waypoint_listener_admits_is_unsupported_since_waypoints_take_services() -> None:
    blue = with_listener(allowed_from="Selector", namespace_selector=(("team", "blue"),))
    parent = dataclasses.replace(WAYPOINT, namespace="shop")
    found = status(blue, http("r", namespace="other", parents=(parent,)))
    assert found["Accepted"] == ("False", "UnsupportedValue")


def test_values_the_waypoint_refuses_are_unsupported_value() -> None:
    refused = HttpRule(
        (HttpMatch("RegularExpression", "/(a+)+"),), backends=(BackendRef("web", 80),)
    )
    assert status(http("r", rule=refused))["Accepted"] == ("False", "UnsupportedValue")
    filtered = HttpRule(filters=(Filter("ExtensionRef"),), backends=(BackendRef("web", 80),))
    assert status(http("r", rule=filtered))["Accepted"] == ("False", "UnsupportedValue")


def test_an_http_route_beside_a_grpc_route_on_one_port_is_conflicted() -> None:
    grpc = m.GRPCRoute(name="g", namespace="shop", parent_refs=(WEB,),
                       rules=(GrpcRule(backends=(BackendRef("web", 80),)),))  # fmt: skip
    assert status(grpc, http("r"), of="r")["Accepted"] == ("False", "Conflicted")
    assert status(grpc, http("r"), of="g") == OK
    # In another group (a consumer route of namespace other), nothing conflicts.
    consumer = http("r", namespace="other", parents=(dataclasses.replace(WEB, namespace="shop"),))
    assert status(grpc, consumer, of="r") == OK


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        (BackendRef("gone", 80), "BackendNotFound"),
        (BackendRef("web", 81), "BackendNotFound"),  # the Service has no such port
        (BackendRef("web", 0, group="example.com", kind="Bucket"), "InvalidKind"),
    ],
)
def test_a_backend_that_does_not_resolve_is_resolved_refs_false(
    backend: BackendRef, reason: str
) -> None:
    found = status(http("r", rule=HttpRule(backends=(backend,))))
    assert found == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", reason)}


def test_cross_namespace_backends_need_no_grant_on_services_and_are_refused_on_gateways() -> None:
    there = HttpRule(backends=(BackendRef("web", 80, namespace="shop"),))
    web = dataclasses.replace(WEB, namespace="shop")
    assert status(http("r", namespace="other", parents=(web,), rule=there)) == OK  # GEP-1294
    everyone = with_listener(allowed_from="All")
    parent = dataclasses.replace(WAYPOINT, namespace="shop")
    found = status(everyone, http("r", namespace="other", parents=(parent,), rule=there))
    assert found["ResolvedRefs"] == ("False", "RefNotPermitted")


def test_a_bad_route_is_reported_on_itself_and_breaks_no_other() -> None:
    bad = http("bad", rule=HttpRule(backends=(BackendRef("gone", 80),)))
    worse = http("worse", parents=(ParentRef("", "Service", "web", port=81),))
    good = http("good")
    store = ObjectStore()
    for obj in shop(bad, worse, good):
        store.put(obj)
    result = translate(store.objects(), version=1)
    write_conditions(store, result)

    def of(name: str) -> dict[str, str]:
        entry = store.get(("HTTPRoute", "shop", name))
        assert entry is not None
        return {c.type: f"{c.status} {c.reason}: {c.message}" for c in entry.conditions}

    assert of("good") == {
        "Accepted": "True Accepted: every parent takes the route; waypoints apply it",
        "ResolvedRefs": "True ResolvedRefs: every backend is a Service port in the mesh",
    }
    assert of("bad")["ResolvedRefs"] == (
        "False BackendNotFound: backend Service shop/gone not found; requests to it fail (500)"
    )
    assert of("worse")["Accepted"] == (
        "False NoMatchingParent: parent Service shop/web has no port 81; the route does not"
        " apply to it"
    )
    # The waypoint acts on the same answers: the good route applies, the others are
    # reported with the same reasons.
    table = compile_snapshot(result.snapshot)
    assert [e.rule.route for e in table.entries("shop/web", 80)] == ["shop/bad", "shop/good"]
    assert {(p.route, p.reason) for p in table.problems} == {
        ("shop/bad", "BackendNotFound"), ("shop/worse", "NoMatchingParent"),
    }  # fmt: skip
    # ``ambit get httproutes -n shop`` and ``-o yaml``.
    items = [served_json(e) for e in store.entries("HTTPRoute")]
    lines = tables.routes_table(items, all_namespaces=False).splitlines()
    assert lines[0].split() == ["NAME", "HOSTNAMES", "ACCEPTED", "RESOLVED", "LOCAL-REPLIES",
                                "AGE"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:-1] for line in lines[1:]}
    assert rows == {
        "bad": ["*", "True", "False", "(BackendNotFound)", "-"],
        "good": ["*", "True", "True", "-"],
        "worse": ["*", "False", "(NoMatchingParent)", "True", "-"],
    }
    (bad_json,) = [i for i in items if i["metadata"]["name"] == "bad"]
    resolved = [c for c in bad_json["status"]["conditions"] if c["type"] == "ResolvedRefs"]
    assert resolved[0]["reason"] == "BackendNotFound"
    assert "shop/gone" in resolved[0]["message"]
    # Gateway API's shape too, as on a cluster, so Istio users' jq paths find it.
    (parent,) = bad_json["status"]["parents"]
    assert parent["controllerName"] == "ambit.io/mesh-controller"
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "web"}
    by_type = {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}
    assert by_type["Accepted"] == ("True", "Accepted")
    assert by_type["ResolvedRefs"] == ("False", "BackendNotFound")
