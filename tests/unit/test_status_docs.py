"""What the status writer applies, without a cluster: a route's conditions per parent
(only ambit's parents; a problem about one parent stays on it), the status documents of
each kind, the merge of a route's atomic ``status.parents`` with other controllers',
and the store's revision that wakes the writer."""

from __future__ import annotations

import trio

from k8s import manifests as m
from k8s.controlplane import write_conditions
from k8s.status_docs import event_problems, merge_parents, same_parents, status_doc, status_of
from k8s.store import Condition, Entry, ObjectStore
from k8s.translate import translate
from mesh.constants import CONTROLLER_NAME
from mesh.model_l7 import BackendRef, HttpRule, ParentRef
from tests.k8s_builders import gateway, ns, pod, svc

GW_GROUP = "gateway.networking.k8s.io"
WEB = ParentRef("", "Service", "web", port=80)
MISSING_PORT = ParentRef("", "Service", "web", port=81)
WAYPOINT = ParentRef(GW_GROUP, "Gateway", "waypoint")
OTHER = ParentRef(GW_GROUP, "Gateway", "edge")
PORTS = (m.ServicePortSpec(port=80, target_port=8080, name="http"),)


def written(*routes: m.HTTPRoute) -> ObjectStore:
    store = ObjectStore()
    objects: list[m.K8sObject] = [
        ns("shop"),
        pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web"}),
        svc("web", "shop", cluster_ip="10.96.0.1", ports=PORTS),
        svc("waypoint", "shop", cluster_ip="10.96.0.9", ports=PORTS),
        gateway("waypoint", "shop"),
        gateway("edge", "shop", gateway_class="example"),
        *routes,
    ]
    for obj in objects:
        store.put(obj)
    write_conditions(store, translate(store.objects(), version=1))
    return store


def route(backend: str, *parents: ParentRef) -> m.HTTPRoute:
    rule = HttpRule(backends=(BackendRef(backend, 80, namespace="shop"),))
    return m.HTTPRoute(name="r", namespace="shop", parent_refs=parents, rules=(rule,))


def entry(store: ObjectStore, kind: str, name: str) -> Entry:
    found = store.get((kind, "shop", name))
    assert found is not None
    return found


def reasons(conditions: tuple[Condition, ...]) -> dict[str, str]:
    return {c.type: f"{c.status} {c.reason}" for c in conditions}


def test_each_parent_of_ambit_gets_its_own_conditions_and_others_none() -> None:
    store = written(route("web", WEB, MISSING_PORT, WAYPOINT, OTHER))
    parents = dict(entry(store, "HTTPRoute", "r").parents)
    assert list(parents) == [WEB, MISSING_PORT, WAYPOINT]  # not the other class's Gateway
    assert reasons(parents[WEB]) == {"Accepted": "True Accepted",
                                     "ResolvedRefs": "True ResolvedRefs"}  # fmt: skip
    assert reasons(parents[MISSING_PORT])["Accepted"] == "False NoMatchingParent"
    assert reasons(parents[WAYPOINT])["Accepted"] == "False UnsupportedValue"


def test_a_problem_of_the_whole_route_is_on_every_parent() -> None:
    store = written(route("gone", WEB, WAYPOINT))
    for _, conditions in entry(store, "HTTPRoute", "r").parents:
        assert reasons(conditions)["ResolvedRefs"] == "False BackendNotFound"
    said = [reason for reason, _ in event_problems(entry(store, "HTTPRoute", "r"))]
    assert said == ["UnsupportedValue", "BackendNotFound"]  # Accepted, ResolvedRefs


def test_a_routes_document_names_its_parents_as_written_with_ambits_controller() -> None:
    store = written(route("web", WEB))
    found = entry(store, "HTTPRoute", "r")
    status = status_of(found, store)
    assert status is not None
    doc = status_doc(found, status)
    assert doc.path == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status"
    assert doc.document["metadata"] == {"name": "r", "namespace": "shop", "uid": found.obj.uid}
    (parent,) = doc.document["status"]["parents"]
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "web", "port": 80}
    assert parent["controllerName"] == CONTROLLER_NAME


def test_the_waypoint_gateway_has_its_services_address_and_another_classes_nothing() -> None:
    store = written()
    status = status_of(entry(store, "Gateway", "waypoint"), store)
    assert status is not None
    assert status["addresses"] == [{"type": "IPAddress", "value": "10.96.0.9"}]
    assert {c["type"] for c in status["conditions"]} == {"Accepted", "Programmed"}
    assert status_of(entry(store, "Gateway", "edge"), store) is None


def test_other_controllers_entries_are_kept_and_ambits_replaced() -> None:
    theirs = {"parentRef": {"name": "edge"}, "controllerName": "example.com/gw",
              "conditions": []}  # fmt: skip
    old = {"parentRef": {"name": "gone"}, "controllerName": CONTROLLER_NAME, "conditions": []}
    new = {"parentRef": {"name": "web"}, "controllerName": CONTROLLER_NAME, "conditions": []}
    current = {"status": {"parents": [old, theirs]}}
    merged = merge_parents(current, [new])
    assert merged == [theirs, new]
    assert same_parents(merged, [new, theirs])
    assert not same_parents(merged, [old, theirs])


async def test_a_change_of_conditions_is_a_revision_not_a_content_version() -> None:
    store = ObjectStore(kinds=["Service"])
    store.put(svc("web", "shop", cluster_ip="10.96.0.1", ports=PORTS))
    version, revision = store.version, store.revision
    bound = Condition("ambit.io/WaypointBound", "True", "Bound", "m")
    assert store.set_conditions(("Service", "shop", "web"), [bound])
    assert (store.version, store.revision) == (version, revision + 1)
    store.set_conditions(("Service", "shop", "web"), [bound])  # the same: no revision
    assert store.revision == revision + 1
    with trio.fail_after(1):
        assert await store.wait_revised(revision) == revision + 1
