"""The traffic-policy kinds in translation (k8s.translate_traffic): host resolution, the
snapshot's values, the problems and conditions a user sees, conflicts, BackendTrafficPolicy
targetRefs, routes naming FaultInjections and LocalRateLimits, and the views."""

from __future__ import annotations

from typing import Any

import pytest

from ambit import tables
from k8s import manifests as m
from k8s.controlplane import write_conditions
from k8s.status_docs import status_doc, status_of
from k8s.store import ObjectStore, object_json
from k8s.translate import Translator, translate
from k8s.translate_traffic import service_of_host
from k8s.views import waypoint_view, ztunnel_view
from mesh import model_traffic as mt
from mesh.constants import CONTROLLER_NAME
from mesh.model import diff
from tests.k8s_builders import ns, pod, svc


def parse(api: str, kind: str, name: str, spec: object, *, created: str = "",
          namespace: str = "shop", **meta: Any) -> m.K8sObject:  # fmt: skip
    metadata = {"name": name, "namespace": namespace, **meta}
    if created:
        metadata["creationTimestamp"] = created
    return m.parse_object({"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec})


def rule(name: str, host: str, *, created: str = "", **spec: Any) -> m.K8sObject:
    return parse("networking.istio.io/v1", "DestinationRule", name, {"host": host, **spec},
                 created=created)  # fmt: skip


def btp(name: str, *targets: tuple[str, str, str], created: str = "", **spec: Any) -> m.K8sObject:
    refs = [{"group": g, "kind": k, "name": n} for g, k, n in targets]
    return parse("gateway.networking.x-k8s.io/v1alpha1", "XBackendTrafficPolicy", name,
                 {"targetRefs": refs, **spec}, created=created)  # fmt: skip


def fault(name: str) -> m.K8sObject:
    return parse("networking.ambit.io/v1alpha1", "FaultInjection", name,
                 {"abort": {"httpStatus": 503}})  # fmt: skip


def shop() -> list[m.K8sObject]:
    return [ns("shop"), ns("other"), pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web"}),
            svc("web", "shop", cluster_ip="10.96.0.1"),
            svc("db", "other", cluster_ip="10.96.0.2")]  # fmt: skip


def problems(objects: list[m.K8sObject]) -> dict[tuple[str, str, str], list[tuple[str, str]]]:
    found = translate(objects, version=1).problems
    return {ref: [(p.reason, p.message) for p in ps] for ref, ps in found.items()}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("web", "shop/web"),
        ("web.other", "other/web"),
        ("web.other.svc", "other/web"),
        ("web.other.svc.cluster.local", "other/web"),
        ("*", None),
        ("*.shop.svc.cluster.local", None),
        ("web.other.svc.example.org", None),
        ("a.b.c", None),
    ],
)
def test_a_hosts_service(host: str, expected: str | None) -> None:
    assert service_of_host(host, "shop") == expected


def test_a_destination_rule_is_in_the_snapshot_as_read() -> None:
    spec = {"trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
                              "outlierDetection": {"consecutive5xxErrors": 3}}}  # fmt: skip
    result = translate([*shop(), rule("web", "web", created="2026-01-01T00:00:00Z", **spec)],
                       version=1)  # fmt: skip
    assert result.snapshot.destination_rules == (
        mt.DestinationRule("web", "shop", "web", "shop/web", "RANDOM", None,
                           mt.OutlierDetection(consecutive_5xx=3), "2026-01-01T00:00:00Z"),
    )  # fmt: skip
    assert result.snapshot.destination_rule("shop/web") == result.snapshot.destination_rules[0]
    assert result.problems == {}


@pytest.mark.parametrize(
    ("host", "reason", "message"),
    [
        ("*.shop.svc.cluster.local", "WildcardHost",
         "spec.host: '*.shop.svc.cluster.local' is a wildcard; ambit applies a DestinationRule"
         " to one Service (name, name.namespace or its FQDN), so this one has no effect"),
        ("api", "TargetNotFound",
         "Service shop/api is not in the mesh; the rule applies to it once it is"),
        ("a.b.c.d", "TargetNotFound",
         "spec.host: 'a.b.c.d' names no Service (write name, name.namespace, name.namespace.svc"
         " or name.namespace.svc.cluster.local); the rule has no effect"),
    ],
)  # fmt: skip
def test_a_host_naming_no_service_is_a_problem(host: str, reason: str, message: str) -> None:
    assert problems([*shop(), rule("r", host)]) == {
        ("DestinationRule", "shop", "r"): [(reason, message)]
    }


def test_the_older_rule_wins_the_newer_is_conflicted() -> None:
    old = rule("old", "web.shop.svc.cluster.local", created="2026-01-01T00:00:00Z")
    new = rule("new", "web", created="2026-02-01T00:00:00Z")
    result = translate([*shop(), new, old], version=1)
    assert result.snapshot.destination_rule("shop/web").name == "old"  # type: ignore[union-attr]
    assert {ref: [p.reason for p in ps] for ref, ps in result.problems.items()} == {
        ("DestinationRule", "shop", "new"): ["Conflicted"]
    }
    (conflict,) = result.problems[("DestinationRule", "shop", "new")]
    assert conflict.message == (
        "Service shop/web has DestinationRule shop/old too, created first; only that one"
        " applies to it"
    )


def test_problems_follow_the_service_and_the_other_rule() -> None:
    translator = Translator()
    old = rule("old", "web", created="2026-01-01T00:00:00Z")
    new = rule("new", "web", created="2026-02-01T00:00:00Z")
    web = svc("web", "shop", cluster_ip="10.96.0.1")
    first = translator.apply([ns("shop"), old, new])
    assert {ref[2]: [p.reason for p in ps] for ref, ps in first.problems.items()} == {
        "old": ["TargetNotFound"], "new": ["TargetNotFound"],
    }  # fmt: skip
    second = translator.apply([web])
    assert {ref[2]: [p.reason for p in ps] for ref, ps in second.problems.items()} == {
        "new": ["Conflicted"]
    }
    third = translator.apply(removes=[("DestinationRule", "shop", "old")])
    assert third.problems == {}
    assert third.snapshot.destination_rule("shop/web").name == "new"  # type: ignore[union-attr]


def test_istios_unapplied_fields_are_reported_the_rest_applies() -> None:
    """Subsets are not applied (said with what to use instead); tls ISTIO_MUTUAL alone is
    what the mesh does anyway, so it is not reported (found trying it as a new user: it
    read like a gap in mutual TLS); another tls mode is (test below)."""
    spec: dict[str, Any] = {"subsets": [{"name": "v1"}],
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                              "loadBalancer": {"simple": "PASSTHROUGH"}}}  # fmt: skip
    assert problems([*shop(), rule("r", "web", **spec)]) == {
        ("DestinationRule", "shop", "r"): [
            ("UnsupportedField", "spec.subsets: not applied by ambit (subsets are a Service"
             " per version, split by HTTPRoute backendRefs weights)"),
            ("UnsupportedValue",
             "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not applied by ambit; the"
             " waypoint balances by LEAST_REQUEST (or set the annotation ambit.io/load-balancer)"),
        ]
    }  # fmt: skip


def test_a_backend_traffic_policy_targets_services() -> None:
    policy = btp("budget", ("", "Service", "web"), ("", "Service", "gone"),
                 ("example.com", "Backend", "b"),
                 retryConstraint={"budget": {"percent": 50}},
                 sessionPersistence={"sessionName": "s"})  # fmt: skip
    result = translate([*shop(), policy], version=1)
    (entry,) = result.snapshot.backend_traffic_policies
    assert entry.services == ("shop/web", "shop/gone")
    assert entry.budget == mt.RetryBudget(percent=50)
    assert result.snapshot.backend_traffic_policy("shop/web") == entry
    assert [(p.reason, p.message) for p in result.problems[("BackendTrafficPolicy", "shop",
                                                            "budget")]] == [
        ("TargetNotFound", "spec.targetRefs[2]: example.com/Backend b: ambit applies"
                           " BackendTrafficPolicies to Services only"),
        ("TargetNotFound", "Service shop/gone is not in the mesh; the policy applies to it once"
                           " it is"),
        ("UnsupportedField", "spec.sessionPersistence: not applied by ambit"),
    ]  # fmt: skip


def test_two_policies_on_one_service_the_newer_is_conflicted() -> None:
    older = btp("a", ("", "Service", "web"), created="2026-01-01T00:00:00Z")
    newer = btp("b", ("", "Service", "web"), created="2026-03-01T00:00:00Z")
    result = translate([*shop(), newer, older], version=1)
    assert result.snapshot.backend_traffic_policy("shop/web").name == "a"  # type: ignore[union-attr]
    (problem,) = result.problems[("BackendTrafficPolicy", "shop", "b")]
    assert (problem.reason, problem.message) == (
        "Conflicted",
        "Service shop/web has BackendTrafficPolicy shop/a too, created first; only that one"
        " applies to it",
    )


# --- routes naming ambit's filters ----------------------------------------------------------


def extension_route(kind: str, name: str, group: str = "networking.ambit.io") -> m.K8sObject:
    return m.parse_object({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"filters": [{"type": "ExtensionRef", "extensionRef":
                                         {"group": group, "kind": kind, "name": name}}],
                            "backendRefs": [{"name": "web", "port": 80}]}]},
    })  # fmt: skip


ROUTE = ("HTTPRoute", "shop", "web")


def test_a_route_naming_a_missing_filter_object_is_not_resolved_until_it_exists() -> None:
    translator = Translator()
    first = translator.apply([*shop(), extension_route("FaultInjection", "slow")])
    assert [(p.reason, p.message) for p in first.problems[ROUTE]] == [
        ("BackendNotFound", "rule 0: FaultInjection shop/slow does not exist; the rule answers 500")
    ]
    second = translator.apply([fault("slow")])
    assert ROUTE not in second.problems
    assert second.snapshot.extension("FaultInjection", "shop/slow") == mt.FaultInjection(
        "slow", "shop", abort_status=503, abort_percent=100.0
    )
    third = translator.apply(removes=[("FaultInjection", "shop", "slow")])
    assert [p.reason for p in third.problems[ROUTE]] == ["BackendNotFound"]


def test_an_extension_ref_to_another_kind_is_unsupported() -> None:
    found = problems([*shop(), extension_route("Limit", "x", group="example.com")])
    assert found[ROUTE] == [
        ("UnsupportedValue", "rule 0: ambit does not apply ExtensionRef filters to"
                             " example.com/Limit; the rule answers 500"),
    ]  # fmt: skip


def test_route_conditions_say_it() -> None:
    store = ObjectStore()
    for obj in [*shop(), extension_route("LocalRateLimit", "limit")]:
        store.put(obj)
    write_conditions(store, translate(store.objects(), version=1))
    entry = store.get(ROUTE)
    assert entry is not None
    resolved = entry.condition("ResolvedRefs")
    assert resolved is not None
    assert (resolved.status, resolved.reason, resolved.message) == (
        "False", "BackendNotFound",
        "rule 0: LocalRateLimit shop/limit does not exist; the rule answers 500",
    )  # fmt: skip


# --- conditions, status and `ambit get` ---------------------------------------------------------


def stored(*objects: m.K8sObject) -> ObjectStore:
    store = ObjectStore()
    for obj in [*shop(), *objects]:
        store.put(obj)
    write_conditions(store, translate(store.objects(), version=1))
    return store


def test_what_ambit_get_shows_of_a_destination_rule() -> None:
    store = stored(rule("good", "web"), rule("wild", "*"),
                   rule("tls", "db.other", trafficPolicy={"tls": {"mode": "DISABLE"}}))  # fmt: skip
    rows = {e.ref[2]: tables.status(object_json(e)) for e in store.entries("DestinationRule")}
    assert rows == {
        "good": "FullyApplied",
        "wild": "WildcardHost (Accepted)",
        "tls": "UnsupportedField (ambit.io/FullyApplied)",
    }
    entry = store.get(("DestinationRule", "shop", "tls"))
    assert entry is not None
    assert [(c.type, c.status, c.reason, c.message) for c in entry.conditions] == [
        ("Accepted", "True", "Accepted", "the waypoint of Service other/db applies it"),
        ("ambit.io/FullyApplied", "False", "UnsupportedField",
         "spec.trafficPolicy.tls: not applied by ambit"),
    ]  # fmt: skip
    status = status_of(entry, store)
    assert status is not None
    assert [c["type"] for c in status["conditions"]] == ["Accepted", "ambit.io/FullyApplied"]


def test_a_backend_traffic_policys_status_has_an_ancestor_per_service() -> None:
    store = stored(btp("budget", ("", "Service", "web"), ("", "Service", "gone")))
    entry = store.get(("BackendTrafficPolicy", "shop", "budget"))
    assert entry is not None
    status = status_of(entry, store)
    assert status is not None
    ancestors = [(a["ancestorRef"]["name"], a["controllerName"],
                  [(c["type"], c["status"], c["reason"]) for c in a["conditions"]])
                 for a in status["ancestors"]]  # fmt: skip
    assert ancestors == [
        ("web", CONTROLLER_NAME,
         [("Accepted", "True", "Accepted"), ("ambit.io/FullyApplied", "True", "FullyApplied")]),
        ("gone", CONTROLLER_NAME,
         [("Accepted", "False", "TargetNotFound"),
          ("ambit.io/FullyApplied", "True", "FullyApplied")]),
    ]  # fmt: skip
    doc = status_doc(entry, status)
    assert doc.path == (
        "/apis/gateway.networking.x-k8s.io/v1alpha1/namespaces/shop/xbackendtrafficpolicies"
        "/budget/status"
    )
    assert (doc.document["kind"], doc.merge) == ("XBackendTrafficPolicy", "ancestors")


def test_filter_objects_are_accepted() -> None:
    store = stored(fault("slow"))
    entry = store.get(("FaultInjection", "shop", "slow"))
    assert entry is not None
    assert tables.status(object_json(entry)) == "Accepted"


# --- views ---------------------------------------------------------------------------------


def test_a_waypoint_gets_them_whole_a_ztunnel_not_at_all() -> None:
    objects = [*shop(), rule("r", "web"), btp("b", ("", "Service", "web")), fault("f")]
    snapshot = translate(objects, version=1).snapshot
    view = waypoint_view(snapshot, "other")
    assert view.destination_rules is snapshot.destination_rules
    assert view.backend_traffic_policies is snapshot.backend_traffic_policies
    assert view.fault_injections is snapshot.fault_injections
    ztunnel = ztunnel_view(snapshot, "node-1")
    assert (ztunnel.destination_rules, ztunnel.backend_traffic_policies,
            ztunnel.fault_injections, ztunnel.local_rate_limits) == ((), (), (), ())  # fmt: skip
    lb = {"loadBalancer": {"simple": "RANDOM"}}
    changed = translate([*objects, rule("r", "web", trafficPolicy=lb)], version=2).snapshot
    assert changed.destination_rules != snapshot.destination_rules
    delta = diff(ztunnel, ztunnel_view(changed, "node-1"))
    assert (delta.upserts, delta.removes) == ((), ())  # a ztunnel is not woken
