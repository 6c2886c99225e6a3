"""Translator: incremental translation gives what translating everything gives, touches
only what a change concerns, and keeps the snapshot when nothing changed."""

from __future__ import annotations

import datetime
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Literal

from k8s import manifests as m
from k8s.store import ObjectRef, ref_of
from k8s.translate import (
    Translator,
    authorization,
    translate,
)
from k8s.translate_l7 import (
    OPT_OUT,
    Traffic,
    grpc_route,
    http_route,
    resolve_waypoint,
    use_waypoint,
    waypoint,
    waypoint_ready,
)
from k8s.translate_parts import _endpoint, _ports, _workload
from k8s.translate_policy import peer_authentication
from k8s.translate_slices import locality, slice_endpoints
from mesh import route_status
from mesh.model import Endpoint, MeshSnapshot, Service, diff
from mesh.model_l7 import BackendRef, GrpcRule, HttpMatch, HttpRule, Listener, ParentRef
from tests.k8s_builders import endpoint_slice, gateway, node, ns, pod, svc

EARLY, LATE = "2026-12-01T10:00:00Z", "2026-12-01T10:00:05Z"


def changed_keys(old: MeshSnapshot, new: MeshSnapshot) -> list[tuple[str, str]]:
    """(kind, key) of every entry the delta between the two snapshots upserts or removes."""
    delta = diff(old, new)
    upserts: list[tuple[str, str]] = [(r.kind, r.key) for r in delta.upserts]
    return upserts + list(delta.removes)


def cluster() -> list[m.K8sObject]:
    return [
        ns("shop"),
        ns("bank", ambient=False),
        pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web"}),
        pod("web-2", "shop", ip="10.0.0.2", labels={"app": "web"}),
        pod("db", "shop", ip="10.0.0.3", labels={"app": "db"}),
        pod("web", "bank", ip="10.0.1.1", labels={"app": "web"}),
        svc("web", "shop", cluster_ip="10.96.0.1"),
        svc("db", "shop", cluster_ip="10.96.0.2"),
        svc("web", "bank", cluster_ip="10.96.1.1"),
    ]


def test_a_pod_change_touches_its_workload_and_the_services_selecting_it_before_or_after() -> None:
    translator = Translator(version=7)
    first = translator.apply(cluster()).snapshot
    assert first.version == 7
    moved = pod("web-2", "shop", ip="10.0.0.2", labels={"app": "db"})
    second = translator.apply([moved]).snapshot
    assert second.version == 8
    assert changed_keys(first, second) == [
        ("service", "shop/db"),
        ("service", "shop/web"),
        ("workload", "shop/web-2"),
    ]
    assert [e.workload_uid for e in second.service("shop/db").endpoints] == [  # type: ignore[union-attr]
        "shop/db",
        "shop/web-2",
    ]
    objects = [o for o in cluster() if ref_of(o) != ref_of(moved)] + [moved]
    assert second == translate(objects, version=8).snapshot


def test_what_does_not_change_the_model_keeps_the_snapshot() -> None:
    translator = Translator()
    first = translator.apply(cluster())
    again = translator.apply(cluster())  # equal objects
    annotated = pod("db", "shop", ip="10.0.0.3", labels={"app": "db"}, annotations=(("a", "b"),))
    after_annotation = translator.apply([annotated])
    assert again.snapshot is first.snapshot
    assert after_annotation.snapshot is first.snapshot
    assert first.snapshot.version == 1


def test_a_namespace_label_change_meshes_the_workloads_of_that_namespace_only() -> None:
    translator = Translator()
    first = translator.apply(cluster()).snapshot
    second = translator.apply([ns("bank", ambient=True)]).snapshot
    assert changed_keys(first, second) == [("workload", "bank/web")]
    assert second.workload("bank/web").meshed  # type: ignore[union-attr]
    third = translator.apply(removes=[("Namespace", "", "shop")]).snapshot
    assert {w.uid for w in third.workloads if not w.meshed} == {
        "shop/web-1",
        "shop/web-2",
        "shop/db",
    }


def test_a_service_change_recomputes_that_service() -> None:
    translator = Translator()
    first = translator.apply(cluster()).snapshot
    selectorless = svc("web", "shop", selector={}, cluster_ip="10.96.0.1")
    second = translator.apply([selectorless]).snapshot
    assert changed_keys(first, second) == [("service", "shop/web")]
    web = second.service("shop/web")  # its endpoints are its EndpointSlices': none
    assert web is not None
    assert web.endpoints == ()
    third = translator.apply([svc("web", "shop", selector={"app": "db"}, cluster_ip="10.96.0.1")])
    web = third.snapshot.service("shop/web")
    assert web is not None
    assert [e.workload_uid for e in web.endpoints] == ["shop/db"]


def test_a_pod_that_loses_its_address_leaves_its_workload_and_endpoints() -> None:
    translator = Translator()
    translator.apply(cluster())
    done = pod("web-1", "shop", ip="10.0.0.1", labels={"app": "web"}, phase="Succeeded")
    snap = translator.apply([done]).snapshot
    assert snap.workload("shop/web-1") is None
    assert [e.workload_uid for e in snap.service("shop/web").endpoints] == [  # type: ignore[union-attr]
        "shop/web-2"
    ]


def test_when_the_holder_of_an_address_goes_the_next_one_takes_it() -> None:
    translator = Translator()
    first = translator.apply(
        [
            pod("old", ip="10.0.0.1", labels={"app": "web"}, created=EARLY),
            pod("new", ip="10.0.0.1", labels={"app": "web"}, created=LATE),
            svc("web"),
        ]
    )
    assert [w.name for w in first.snapshot.workloads] == ["old"]
    assert set(first.problems) == {("Pod", "default", "old"), ("Pod", "default", "new")}
    second = translator.apply(removes=[("Pod", "default", "old")])
    assert [w.name for w in second.snapshot.workloads] == ["new"]
    assert [e.workload_uid for e in second.snapshot.services[0].endpoints] == ["default/new"]
    assert second.problems == {}
    # The pod made again is newer than the one that has the address now: it waits.
    third = translator.apply([pod("old", ip="10.0.0.1", created="2026-12-01T11:00:00Z")])
    assert [w.name for w in third.snapshot.workloads] == ["new"]
    assert third.problems[("Pod", "default", "old")][0].reason == "IPConflict"
    # Given another address, it is in the mesh and nobody has a problem.
    fourth = translator.apply([pod("old", ip="10.0.0.9", created="2026-12-01T11:00:00Z")])
    assert [w.name for w in fourth.snapshot.workloads] == ["new", "old"]
    assert fourth.problems == {}


def test_removing_what_is_not_there_changes_nothing() -> None:
    translator = Translator()
    first = translator.apply(cluster())
    assert translator.apply(removes=[("Pod", "shop", "nope"), ("Service", "x", "y")]) is first


# --- incremental == full, on random changes --------------------------------------------------

NAMESPACES = ["a", "b", "c"]
LABELS = [
    {"app": "web"},
    {"app": "web", "v": "2"},
    {"app": "db"},
    {"ambit.io/dataplane-mode": "none"},
]
# The waypoint labels an object may carry: none, naming a waypoint (here or in b), opting out.
USE = [
    {},
    {"istio.io/use-waypoint": "w0"},
    {"istio.io/use-waypoint": "w0"},
    {"istio.io/use-waypoint": "w1"},
    {"ambit.io/use-waypoint": "w0", "ambit.io/use-waypoint-namespace": "b"},
    {"istio.io/use-waypoint": "none"},
]
SELECTORS = [{"app": "web"}, {"app": "web", "v": "2"}, {"app": "db"}, {}, {}, {"v": "2"}]
TIMES = ["", EARLY, LATE, "2026-12-01T10:00:00+01:00"]


def random_object(rng: random.Random) -> m.K8sObject:
    namespace = rng.choice(NAMESPACES)
    kind = rng.choice(["Pod"] * 3 + ["Service"] * 2 + ["Namespace", "Policy", "Peer", "Route"]
                      + ["Gateway"] * 2 + ["Slice"] * 4 + ["Node"])  # fmt: skip
    if kind == "Pod":
        return pod(
            f"p{rng.randrange(8)}",
            namespace,
            ip=rng.choice([None, *(f"10.0.0.{i}" for i in range(1, 25))]),
            labels=rng.choice(LABELS) | rng.choice(USE),
            ports=rng.choice([{}, {"http": 8080}, {"http": 8081}]),
            created=rng.choice(TIMES),
            phase=rng.choice(["Running", "Running", "Pending", "Succeeded"]),
            host_network=rng.random() < 0.1,
            node_name=rng.choice(["node-1", "node-2"]),
        )
    if kind == "Service":
        target: int | str = 8080 if rng.random() < 0.5 else "http"
        port = m.ServicePortSpec(port=80, target_port=target)
        name = rng.choice(["s0", "s1", "w0", "w1"])  # w0 and w1: in front of a waypoint
        # Ordinary Services fight over a few addresses; a waypoint's rarely does.
        addresses = [f"10.96.0.{i}" for i in range(1, 4 if name[0] == "s" else 9)]
        return svc(
            name,
            namespace,
            selector=rng.choice(SELECTORS if name[0] == "s" else SELECTORS[:3]),
            ports=(port,),
            cluster_ip=rng.choice([None, *addresses]),
            created=rng.choice(TIMES),
            labels=rng.choice(USE),
        )
    if kind == "Slice":  # of a Service (maybe one with a selector, which ignores it)
        pods = [None] * 8 + [(namespace, f"p{i}") for i in range(8)]  # half: no pod
        members = tuple(m.SliceEndpoint(address=f"10.0.0.{rng.randrange(1, 25)}",
                                        ready=rng.random() < 0.8, pod=rng.choice(pods))
                        for _ in range(rng.randrange(1, 4)))  # fmt: skip
        ports = rng.choice([(m.SlicePort(port=8080),)] * 3 + [(m.SlicePort(port=None),), ()])
        service = rng.choice(["s0", "s0", "s1", "s1", "w0"])
        family = rng.choice(["IPv4"] * 4 + ["IPv6"])
        return endpoint_slice(
            f"sl{rng.randrange(3)}", namespace, service, members, address_type=family, ports=ports
        )
    if kind == "Node":
        return node(rng.choice(["node-1", "node-2"]), zone=rng.choice(["", "z1", "z2"]))
    if kind == "Namespace":
        team = rng.choice([{}, {"team": "x"}])  # what a listener's selector may look for
        return ns(namespace, ambient=rng.random() < 0.5, labels=rng.choice(USE) | team)
    if kind == "Gateway":  # a waypoint when of a waypoint class and its Service runs
        found = gateway(
            f"w{rng.randrange(2)}",
            namespace,
            gateway_class=rng.choice(["istio-waypoint", "ambit-waypoint", "other"]),
            labels=rng.choice([{}, *({"istio.io/waypoint-for": f} for f in ("workload", "all"))]),
        )
        allowed: Literal["All", "Same", "Selector"] = rng.choice(
            ["Same", "Same", "All", "Selector"]
        )
        chosen: tuple[tuple[str, str], ...] | None = (
            (("team", "x"),) if allowed == "Selector" else None
        )
        listener = Listener("mesh", 15008, "HBONE", allowed_from=allowed, namespace_selector=chosen)
        return replace(found, listeners=(listener,))
    if kind == "Route":  # HTTP or gRPC, on a Service (some port) or a Gateway
        names = ["s0", "s1", "s2", "w0"]
        parent = rng.choice(
            [ParentRef("", "Service", rng.choice(names), port=rng.choice([0, 0, 80, 81]))] * 3
            + [ParentRef("gateway.networking.k8s.io", "Gateway", f"w{rng.randrange(2)}")]
        )
        backends = (BackendRef(rng.choice(names), 80, namespace=rng.choice(["", "a"])),)
        if rng.random() < 0.3:
            return m.GRPCRoute(
                name=f"g{rng.randrange(2)}", namespace=namespace, parent_refs=(parent,),
                rules=(GrpcRule(backends=backends),),
            )  # fmt: skip
        path = rng.choice(["/", "/", "(a+)+"])  # the last refused (nested repetition)
        match = HttpMatch("RegularExpression" if path != "/" else "PathPrefix", path)
        return m.HTTPRoute(
            name=f"r{rng.randrange(2)}",
            namespace=namespace,
            parent_refs=(parent,),
            rules=(HttpRule(matches=(match,), backends=backends),),
        )
    if kind == "Policy":
        selector = tuple(rng.choice(SELECTORS).items()) or None
        return m.AuthorizationPolicy(
            name=f"ap{rng.randrange(3)}",
            namespace=namespace,
            action=rng.choice(["ALLOW", "DENY"]),
            selector=selector,
        )
    return m.PeerAuthentication(
        name=f"pa{rng.randrange(2)}", namespace=namespace, mode=rng.choice(["STRICT", "PERMISSIVE"])
    )


def random_batch(
    rng: random.Random, held: Iterable[ObjectRef]
) -> tuple[list[m.K8sObject], list[ObjectRef]]:
    refs = sorted(held)
    upserts = [random_object(rng) for _ in range(rng.choice([1, 1, 1, 2, 4]))]
    removes = rng.sample(refs, min(len(refs), rng.choice([0, 0, 1, 2])))
    return upserts, removes


def reference(
    objects: Iterable[m.K8sObject], version: int
) -> tuple[MeshSnapshot, dict[ObjectRef, tuple[str, ...]]]:
    """The rules written out plainly: every pod against every Service, conflicts by sorting
    the claimants of each address, then each waypoint label resolved against the finished
    model. The per-object mappings are translate's own."""
    objs = list(objects)
    namespaces = {o.name: o for o in objs if isinstance(o, m.Namespace)}
    reasons: dict[ObjectRef, tuple[str, ...]] = {}

    def first_created(claimants: list[Any], reason: str, address: Any) -> list[Any]:
        holders = []
        for _, group in itertools.groupby(sorted(claimants, key=address), key=address):
            ordered = sorted(
                group, key=lambda o: (seconds(o.creation_timestamp), o.namespace, o.name)
            )
            holders.append(ordered[0])
            if len(ordered) > 1:
                reasons[ref_of(ordered[0])] = (reason + "Kept",)
                reasons.update((ref_of(o), (reason,)) for o in ordered[1:])
        return holders

    pods = [
        p
        for p in objs
        if isinstance(p, m.Pod)
        and p.pod_ip
        and not p.host_network
        and p.phase not in ("Succeeded", "Failed")
    ]
    pods = first_created(pods, "IPConflict", lambda p: p.pod_ip)
    services = [s for s in objs if isinstance(s, m.Service) and s.cluster_ip]
    services = first_created(services, "ClusterIPConflict", lambda s: s.cluster_ip)
    nodes = {n.name: locality(n) for n in objs if isinstance(n, m.Node)}

    def endpoints(s: m.Service) -> Iterable[Endpoint]:  # its slices' when it has no selector
        if not s.selector:
            return slice_endpoints(s, [o for o in objs if isinstance(o, m.EndpointSlice) and (
                o.namespace, o.service_name) == (s.namespace, s.name)]).values()  # fmt: skip
        return (e for p in pods if (e := _endpoint(s, p)) is not None)

    snapshot = MeshSnapshot(
        version,
        tuple(
            _workload(
                p, namespaces.get(p.namespace), "example.org", locality=nodes.get(p.node_name)
            )
            for p in pods
        ),
        tuple(
            Service(s.name, s.namespace, s.cluster_ip or "", _ports(s), tuple(endpoints(s)))
            for s in services
        ),
        tuple(authorization(a) for a in objs if isinstance(a, m.AuthorizationPolicy)),
        tuple(peer_authentication(p) for p in objs if isinstance(p, m.PeerAuthentication)),
        gateways=tuple(g for o in objs if isinstance(o, m.Gateway) and (g := waypoint(o)[0])),
        http_routes=tuple(http_route(r) for r in objs if isinstance(r, m.HTTPRoute)),
        grpc_routes=tuple(grpc_route(r) for r in objs if isinstance(r, m.GRPCRoute)),
    )
    return with_waypoints(snapshot, objs, reasons), reasons


def with_waypoints(
    snapshot: MeshSnapshot, objs: list[m.K8sObject], reasons: dict[ObjectRef, tuple[str, ...]]
) -> MeshSnapshot:
    """``snapshot`` with the waypoint of every Service and workload, and ``reasons`` with
    the problems of the objects naming waypoints and of the routes."""
    refs = {ref_of(o): o for o in objs}
    gateways = {g.key: g for g in snapshot.gateways}

    def bind(ref: ObjectRef, traffic: Traffic | None, serves: set[str]) -> str | None:
        own_namespace = ref[2] if traffic is None else ref[1]
        wanted = use_waypoint(refs[ref].labels, own_namespace)
        explicit = wanted is not None
        namespace = refs.get(("Namespace", "", own_namespace))
        if wanted is None and traffic is not None and namespace is not None:
            wanted = use_waypoint(namespace.labels, own_namespace)
        if wanted is None or wanted == OPT_OUT:
            return None
        gateway_ns, _, gateway_name = wanted.partition("/")
        gateway = refs.get(("Gateway", gateway_ns, gateway_name))
        assert gateway is None or isinstance(gateway, m.Gateway)
        ready = waypoint_ready(snapshot.service(wanted), snapshot.workload)
        entry = gateways.get(wanted)
        labels = namespace.labels if namespace is not None else ()
        admitted = entry is None or entry.admits(own_namespace, labels)
        key, problem = resolve_waypoint(wanted, traffic, entry, gateway, ready, admitted)
        if problem and (explicit or (traffic == "service" and "Mismatch" not in problem.reason)):
            reasons[ref] = (*reasons.get(ref, ()), problem.reason)
        return None if key in serves else key

    def endpoints(key: str) -> set[str]:
        service = snapshot.service(key)
        return {e.workload_uid for e in service.endpoints} if service else set()

    workloads = []
    for w in snapshot.workloads:
        key = bind(("Pod", w.namespace, w.name), "workload", set())
        workloads.append(w if key is None or w.uid in endpoints(key) else replace(w, waypoint=key))
    services = [
        replace(s, waypoint=bind(("Service", s.namespace, s.name), "service", {s.key}))
        for s in snapshot.services
    ]
    for o in objs:
        if isinstance(o, m.Namespace):
            bind(ref_of(o), None, set())
        if isinstance(o, m.Gateway) and waypoint(o)[1]:
            reasons[ref_of(o)] = ("InvalidWaypointFor",)
    # Routes: every route checked at once, against the finished model.
    routes = [http_route(o) if isinstance(o, m.HTTPRoute) else grpc_route(o)
              for o in objs if isinstance(o, m.HTTPRoute | m.GRPCRoute)]  # fmt: skip
    found = route_status.check_routes(
        routes,
        snapshot.service,
        route_status.Gateways(
            gateways.get,
            lambda key: ("Gateway", *key.split("/")) in refs,
            lambda name: (
                refs[("Namespace", "", name)].labels if ("Namespace", "", name) in refs else ()
            ),
        ),
    )
    for (kind, key), problems in found.items():
        namespace, _, name = key.partition("/")
        reasons[(kind, namespace, name)] = tuple(p.reason for p in problems)
    return replace(snapshot, workloads=tuple(workloads), services=tuple(services))


def seconds(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp).timestamp() if timestamp else math.inf


def content(snapshot: MeshSnapshot) -> tuple[object, ...]:
    return (
        snapshot.workloads,
        snapshot.services,
        snapshot.authorizations,
        snapshot.peer_authentications,
        snapshot.gateways,
        snapshot.http_routes,
        snapshot.grpc_routes,
    )


def test_incremental_translation_equals_full_translation_of_the_same_objects() -> None:
    changes = bound = 0
    for seed in range(3):
        rng = random.Random(seed)
        translator = Translator(trust_domain="example.org")
        objects: dict[ObjectRef, m.K8sObject] = {}
        previous = translator.apply()
        for _ in range(300):
            upserts, removes = random_batch(rng, objects)
            for ref in removes:
                objects.pop(ref, None)
            for obj in upserts:
                objects[ref_of(obj)] = obj
            result = translator.apply(upserts, removes)
            version = result.snapshot.version
            full = translate(objects.values(), trust_domain="example.org", version=version)
            assert result == full
            assert dict(translator.objects()) == objects
            snapshot, reasons = reference(objects.values(), version)
            assert result.snapshot == snapshot
            assert {
                ref: tuple(p.reason for p in found) for ref, found in result.problems.items()
            } == reasons
            if result.snapshot is not previous.snapshot:
                assert version == previous.snapshot.version + 1
                assert content(result.snapshot) != content(previous.snapshot)
                changes += 1
            snapshot = result.snapshot
            bound += any(s.waypoint for s in snapshot.services) or any(
                w.waypoint for w in snapshot.workloads
            )
            previous = result
    assert changes > 500  # the changes really change things
    assert bound > 15  # and waypoints come and go
