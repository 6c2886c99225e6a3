"""k8s.local_replies: which objects a Service's response flags are about, the condition's
words, its renewal; the store keeping it beside translation's conditions, and the status
writer's documents carrying it."""

from __future__ import annotations

from ambit import tables
from k8s.controlplane import write_conditions
from k8s.local_replies import (
    CONDITION_LOCAL_REPLIES,
    Renewal,
    cleared,
    local_replies,
    round2,
)
from k8s.manifests import K8sObject, read_documents
from k8s.status_docs import status_of
from k8s.store import Condition, ObjectStore, object_json, ref_of
from k8s.translate import translate
from mesh.traffic_graph import ServiceFlags
from tests.k8s_builders import ns, svc

OBJECTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: networking.ambit.io, kind: FaultInjection, name: flaky}
    backendRefs: [{name: reviews, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 80}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: networking.ambit.io, kind: LocalRateLimit, name: hundred}
    backendRefs: [{name: ratings, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 20}}}
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: reviews, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  retryConstraint: {budget: {percent: 50, interval: 10s}}
---
apiVersion: networking.ambit.io/v1alpha1
kind: FaultInjection
metadata: {name: flaky, namespace: shop}
spec: {abort: {httpStatus: 503, percentage: {value: 50}}}
---
apiVersion: networking.ambit.io/v1alpha1
kind: LocalRateLimit
metadata: {name: hundred, namespace: shop}
spec: {requests: 100, unit: Second}
"""


def objects() -> list[K8sObject]:
    docs = read_documents(OBJECTS, "test.yaml")
    assert [d.error for d in docs if d.error] == []
    return [d.obj for d in docs if d.obj is not None]


def messages(flags: dict[tuple[str, str], ServiceFlags]) -> dict[str, str]:
    found = local_replies(objects(), flags)
    return {f"{ref[0]}/{ref[2]}": c.message for ref, c in found.items()}


REVIEWS_FLAGS = {
    ("shop", "reviews"): ServiceFlags({"FI": 1234, "UO": 80, "URX": 3}, ("shop/waypoint",))
}


def test_each_object_gets_the_flags_of_its_services_it_can_cause() -> None:
    assert messages(REVIEWS_FLAGS) == {
        "HTTPRoute/reviews": "last 5m at waypoint shop/waypoint: 1200 FI (fault injected),"
        " 80 UO (overflow: circuit open), 3 URX (retries exhausted)",
        "DestinationRule/reviews": "last 5m at waypoint shop/waypoint:"
        " 80 UO (overflow: circuit open), 3 URX (retries exhausted)",
        "BackendTrafficPolicy/reviews": "last 5m at waypoint shop/waypoint:"
        " 3 URX (retries exhausted)",
        "FaultInjection/flaky": "last 5m at waypoint shop/waypoint: 1200 FI (fault injected)",
    }


def test_a_filter_object_is_about_the_services_of_the_routes_naming_it() -> None:
    flags = {("shop", "ratings"): ServiceFlags({"RL": 40, "FI": 2}, ("shop/waypoint",))}
    assert set(messages(flags)) == {"HTTPRoute/ratings", "LocalRateLimit/hundred"}
    assert messages(flags)["LocalRateLimit/hundred"].endswith(": 40 RL (rate limited)")


def test_a_caller_that_left_is_not_a_routes_local_reply() -> None:
    """DC is the caller going away (a gRPC deadline, a curl cut short): nothing a route
    did, so it is no route's local reply (found trying it as a new user: a route created
    after such a call showed '1 DC')."""
    flags = {("shop", "reviews"): ServiceFlags({"DC": 3, "URX": 1}, ("shop/waypoint",))}
    assert messages(flags)["HTTPRoute/reviews"] == (
        "last 5m at waypoint shop/waypoint: 1 URX (retries exhausted)"
    )
    assert messages({("shop", "reviews"): ServiceFlags({"DC": 3}, ("shop/waypoint",))}) == {}


def test_no_flags_no_condition() -> None:
    assert messages({}) == {}
    assert messages({("other", "reviews"): REVIEWS_FLAGS[("shop", "reviews")]}) == {}


def test_counts_are_rounded_to_two_significant_digits() -> None:
    assert [round2(n) for n in (0, 7, 99, 100, 149, 1234, 1250, 98765)] == [
        0, 7, 99, 100, 150, 1200, 1300, 99000,
    ]  # fmt: skip


def true(message: str) -> Condition:
    return Condition(CONDITION_LOCAL_REPLIES, "True", "ResponseFlags", message)


def test_renewal_writes_a_new_status_at_once_and_a_new_message_after_the_hold() -> None:
    renewal = Renewal(hold=60.0)
    ref = ("HTTPRoute", "shop", "reviews")
    assert renewal.due(0.0, {}, [ref]) == {}  # never concerned: nothing written
    assert renewal.due(1.0, {ref: true("80 UO")}, [ref]) == {ref: true("80 UO")}
    assert renewal.due(6.0, {ref: true("80 UO")}, [ref]) == {}  # unchanged
    assert renewal.due(11.0, {ref: true("90 UO")}, [ref]) == {}  # held
    assert renewal.due(61.0, {ref: true("90 UO")}, [ref]) == {ref: true("90 UO")}
    assert renewal.due(62.0, {}, [ref]) == {ref: cleared("5m")}  # status changed: at once
    assert renewal.due(63.0, {}, [ref]) == {}
    assert renewal.due(64.0, {}, []) == {ref: None}  # the object went


def stored() -> ObjectStore:
    store = ObjectStore()
    for obj in [ns("shop"), svc("reviews", "shop", cluster_ip="10.96.0.1"), *objects()]:
        store.put(obj)
    return store


def test_translations_conditions_keep_the_observed_one_beside_them() -> None:
    store = stored()
    ref = ("HTTPRoute", "shop", "reviews")
    entry = store.get(ref)
    assert entry is not None
    assert store.set_observed(ref, CONDITION_LOCAL_REPLIES, true("80 UO"), uid=entry.obj.uid)
    write_conditions(store, translate(store.objects(), version=1))
    entry = store.get(ref)
    assert entry is not None
    assert entry.condition("Accepted") is not None
    observed = entry.condition(CONDITION_LOCAL_REPLIES)
    assert observed is not None
    assert observed.message == "80 UO"
    assert store.set_observed(ref, CONDITION_LOCAL_REPLIES, None, uid=entry.obj.uid)
    write_conditions(store, translate(store.objects(), version=2))
    entry = store.get(ref)
    assert entry is not None
    assert entry.condition(CONDITION_LOCAL_REPLIES) is None
    assert entry.condition("Accepted") is not None


def test_an_observed_condition_never_lands_on_a_successor() -> None:
    store = stored()
    ref = ("DestinationRule", "shop", "reviews")
    assert not store.set_observed(ref, CONDITION_LOCAL_REPLIES, true("1 UO"), uid="not-its-uid")
    entry = store.get(ref)
    assert entry is not None
    assert entry.condition(CONDITION_LOCAL_REPLIES) is None


def test_on_the_cluster_a_routes_condition_is_in_its_service_parents_entry() -> None:
    store = stored()
    write_conditions(store, translate(store.objects(), version=1))
    route = next(o for o in objects() if ref_of(o) == ("HTTPRoute", "shop", "reviews"))
    entry = store.get(ref_of(route))
    assert entry is not None
    store.set_observed(entry.ref, CONDITION_LOCAL_REPLIES, true("80 UO"), uid=entry.obj.uid)
    entry = store.get(ref_of(route))
    assert entry is not None
    status = status_of(entry, store)
    assert status is not None
    [parent] = status["parents"]
    assert parent["parentRef"]["kind"] == "Service"
    types = {c["type"]: c["message"] for c in parent["conditions"]}
    assert types[CONDITION_LOCAL_REPLIES] == "80 UO"
    assert "Accepted" in types


def test_ambit_get_shows_the_counts_and_keeps_status_to_how_the_object_is() -> None:
    store = stored()
    write_conditions(store, translate(store.objects(), version=1))
    ref = ("DestinationRule", "shop", "reviews")
    entry = store.get(ref)
    assert entry is not None
    [condition] = local_replies([entry.obj], REVIEWS_FLAGS).values()
    store.set_observed(ref, CONDITION_LOCAL_REPLIES, condition, uid=entry.obj.uid)
    shown = store.get(ref)
    assert shown is not None
    item = object_json(shown)
    assert tables.local_replies(item) == "80 UO,3 URX"
    assert tables.status(item) == "FullyApplied"  # as without it: traffic met it, no problem
    store.set_observed(ref, CONDITION_LOCAL_REPLIES, cleared("5m"), uid=entry.obj.uid)
    shown = store.get(ref)
    assert shown is not None
    assert tables.local_replies(object_json(shown)) == "-"
    assert tables.status(object_json(shown)) == "FullyApplied"  # False: not a problem
