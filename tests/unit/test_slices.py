"""EndpointSlices and Nodes, read and translated: a Service without a selector takes
its endpoints from its slices (ready ones, ports by name, a pod's targetRef its
workload, other addresses outside the mesh: plain TCP from a ztunnel), a Service with
a selector ignores slices, a workload has its node's locality; what is stripped from
the API's objects still reads the same."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from k8s import manifests as m
from k8s.sources.resources import RESOURCES
from k8s.sources.strip import strip
from k8s.translate import Translator, translate
from k8s.translate_slices import address_uid, slice_endpoints
from mesh.model import Endpoint, Locality, Workload
from tests.k8s_builders import ns, pod, svc
from tests.unit.test_translator import changed_keys
from ztunnel.plan import Direct, Passthrough, Pick, plan_outbound

ZONED = {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1a"}


def slice_doc(endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "ext-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 6432, "protocol": "TCP"}],
        "endpoints": endpoints,
        **extra,
    }  # fmt: skip


def endpoint(address: str, pod_name: str | None = None, **conditions: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if pod_name is not None:
        out["targetRef"] = {"kind": "Pod", "namespace": "shop", "name": pod_name}
    return out


def a_slice(endpoints: list[dict[str, Any]], **extra: Any) -> m.EndpointSlice:
    found = m.parse_object(slice_doc(endpoints, **extra))
    assert isinstance(found, m.EndpointSlice)
    return found


PG = m.ServicePortSpec(port=5432, target_port=6432, name="pg")
EXT = svc("ext", "shop", selector={}, ports=(PG,), cluster_ip="10.96.0.9")


def endpoints_of(service: m.Service, *slices: m.EndpointSlice) -> dict[str, tuple[str, Any]]:
    return {uid: (e.ip, e.ports) for uid, e in slice_endpoints(service, slices).items()}


# --- reading --------------------------------------------------------------------------------


def test_a_slice_reads_its_service_endpoints_and_ports() -> None:
    found = a_slice([endpoint("10.0.0.5", "db", ready=False, terminating=True)])
    assert found.service_name == "ext"
    (e,) = found.endpoints
    assert (e.address, e.ready, e.serving, e.terminating, e.pod) == (
        "10.0.0.5", False, True, True, ("shop", "db"))  # fmt: skip
    assert found.ports == (m.SlicePort(port=6432, name="pg"),)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"addressType": "IPv5"}, "addressType: must be one of IPv4, IPv6, FQDN"),
        ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses: an endpoint needs"),
        ({"endpoints": [{"addresses": ["db.example"]}]}, "is not an IP address"),
        ({"endpoints": [endpoint("10.0.0.5") | {"conditions": {"ready": "yes"}}]},
         "endpoints[0].conditions.ready: must be true or false"),
        ({"ports": [{"name": "pg", "port": 0}]}, "ports[0].port: must be an integer 1-65535"),
    ],
)  # fmt: skip
def test_a_broken_slice_is_refused_naming_the_field(change: dict[str, Any], error: str) -> None:
    with pytest.raises(m.ManifestError, match=error.replace("[", r"\[").replace("]", r"\]")):
        m.parse_object(slice_doc([endpoint("10.0.0.5")]) | change)


def test_a_node_reads_its_zone_region_and_internal_ip() -> None:
    node = m.parse_object(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": ZONED},
         "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                  {"type": "InternalIP", "address": "192.168.1.4"}]}}
    )  # fmt: skip
    assert isinstance(node, m.Node)
    assert (node.region, node.zone, node.internal_ip) == ("eu", "eu-1a", "192.168.1.4")


def test_stripped_slice_and_node_read_as_the_full_ones() -> None:
    full_slice = slice_doc(
        [endpoint("10.0.0.5", "db", ready=True) | {
            "addresses": ["10.0.0.5", "10.0.0.6"], "nodeName": "n1", "zone": "eu-1a",
            "hints": {"forZones": [{"name": "eu-1a"}]}, "deprecatedTopology": {"a": "b"}}],
    )  # fmt: skip
    full_slice["metadata"]["managedFields"] = [{"manager": "kcm"}]
    full_node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": ZONED | {"kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.4"},
                                 {"type": "Hostname", "address": "n1"}],
                   "capacity": {"cpu": "2"}, "images": [{"names": ["x"]}]},
    }  # fmt: skip
    small_slice = strip(full_slice, kind="EndpointSlice", api_version="discovery.k8s.io/v1")
    assert small_slice["endpoints"] == [
        {"addresses": ["10.0.0.5"], "conditions": {"ready": True}, "nodeName": "n1",
         "zone": "eu-1a", "targetRef": {"kind": "Pod", "namespace": "shop", "name": "db"}}
    ]  # fmt: skip
    assert "managedFields" not in small_slice["metadata"]
    small_node = strip(full_node, kind="Node", api_version="v1")
    assert small_node == {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": ZONED},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.4"}]},
    }  # fmt: skip
    assert m.parse_object(small_slice) == m.parse_object(full_slice)
    small, full = m.parse_object(small_node), m.parse_object(full_node)
    assert isinstance(small, m.Node)
    assert isinstance(full, m.Node)
    assert (small.zone, small.region, small.internal_ip) == (full.zone, full.region, "192.168.1.4")


def test_endpointslices_and_nodes_are_built_in_resources_not_crds() -> None:
    by_name = {r.name: r for r in RESOURCES}
    slices, nodes = by_name["endpointslices.discovery.k8s.io"], by_name["nodes"]
    assert slices.path("v1") == "/apis/discovery.k8s.io/v1/endpointslices"
    assert nodes.path("v1") == "/api/v1/nodes"
    assert not slices.crd
    assert not nodes.crd
    assert not nodes.namespaced


# --- endpoints of a Service without a selector ---------------------------------------------


def test_ready_endpoints_serve_and_terminating_or_unready_ones_do_not() -> None:
    found = endpoints_of(
        EXT,
        a_slice([
            endpoint("10.0.0.5", "db"),  # conditions unset: ready
            endpoint("192.0.2.7", ready=True),
            endpoint("192.0.2.8", ready=False, serving=True, terminating=True),
            endpoint("192.0.2.9", ready=False),
        ]),
    )  # fmt: skip
    assert found == {
        "shop/db": ("10.0.0.5", ((5432, 6432),)),
        address_uid("shop", "ext", "192.0.2.7"): ("192.0.2.7", ((5432, 6432),)),
    }


def test_ports_are_matched_by_name_and_protocol() -> None:
    two = svc("ext", "shop", selector={}, cluster_ip="10.96.0.9", ports=(
        PG, m.ServicePortSpec(port=9187, target_port=9187, name="metrics"),
        m.ServicePortSpec(port=53, target_port=53, name="dns", protocol="UDP")))  # fmt: skip
    ports = [
        {"name": "metrics", "port": 19187},
        {"name": "pg", "port": 6432},
        {"name": "dns", "port": 5353, "protocol": "TCP"},  # not the Service's UDP port
    ]
    found = endpoints_of(two, a_slice([endpoint("192.0.2.7")], ports=ports))
    assert found[address_uid("shop", "ext", "192.0.2.7")][1] == ((5432, 6432), (9187, 19187))
    # A slice port of another name serves nothing; one without a number, the targetPort.
    assert endpoints_of(EXT, a_slice([endpoint("192.0.2.7")], ports=[{"name": "other"}])) == {}
    anyport = endpoints_of(EXT, a_slice([endpoint("192.0.2.7")], ports=[{"name": "pg"}]))
    assert anyport[address_uid("shop", "ext", "192.0.2.7")][1] == ((5432, 6432),)


def test_one_backend_in_two_slices_is_one_endpoint_with_the_ports_of_both() -> None:
    two = svc("ext", "shop", selector={}, cluster_ip="10.96.0.9",
              ports=(PG, m.ServicePortSpec(port=80, target_port=80, name="http")))  # fmt: skip
    first = a_slice([endpoint("10.0.0.5", "db")])
    second = a_slice([endpoint("10.0.0.5", "db")], ports=[{"name": "http", "port": 8080}])
    second = m.EndpointSlice(**{**vars(second), "name": "ext-def"})
    assert endpoints_of(two, first, second) == {"shop/db": ("10.0.0.5", ((80, 8080), (5432, 6432)))}


def test_only_slices_of_the_services_address_family_count() -> None:
    v6 = a_slice([endpoint("fd00::5")], addressType="IPv6")
    fqdn = m.parse_object(slice_doc([endpoint("db.example.com")], addressType="FQDN"))
    assert isinstance(fqdn, m.EndpointSlice)
    assert endpoints_of(EXT, v6, fqdn) == {}
    v6_service = svc("ext", "shop", selector={}, ports=(PG,), cluster_ip="fd00:96::9")
    assert list(endpoints_of(v6_service, v6)) == [address_uid("shop", "ext", "fd00::5")]


def cluster(*extra: m.K8sObject) -> list[m.K8sObject]:
    return [
        ns("shop"),
        pod("client", "shop", ip="10.0.0.2", node_name="n1"),
        pod("db", "shop", ip="10.0.0.5", labels={"app": "db"}, node_name="n2"),
        EXT,
        svc("db", "shop", ports=(PG,), cluster_ip="10.96.0.10"),
        *extra,
    ]


def choosing(uid: str) -> Pick:
    def pick(found: Sequence[Endpoint]) -> Endpoint:
        return next(e for e in found if e.workload_uid == uid)

    return pick


def test_a_ztunnel_sends_a_pod_hbone_and_an_address_outside_the_mesh_plain_tcp() -> None:
    both = a_slice([endpoint("10.0.0.5", "db"), endpoint("192.0.2.7")])
    snapshot = translate(cluster(both), version=1).snapshot
    client = snapshot.workload("shop/client")
    assert client is not None
    plans = {
        uid: plan_outbound(snapshot, client, "10.96.0.9", 5432, pick=choosing(uid))
        for uid in ("shop/db", address_uid("shop", "ext", "192.0.2.7"))
    }
    to_pod, to_vm = plans.values()
    assert isinstance(to_pod, Direct)
    assert to_pod.dial == ("10.0.0.5", 15008)
    assert str(to_pod.expected_identity) == "spiffe://cluster.local/ns/shop/sa/default"
    assert isinstance(to_vm, Passthrough)
    assert (to_vm.dial, to_vm.dst_workload) == (("192.0.2.7", 6432), None)


def test_a_service_with_a_selector_ignores_slices_and_is_not_recomputed_for_them() -> None:
    translator = Translator()
    first = translator.apply(cluster()).snapshot
    kcm = m.EndpointSlice(**{**vars(a_slice([endpoint("192.0.2.7")])), "name": "db-kcm",
                             "labels": (("kubernetes.io/service-name", "db"),)})  # fmt: skip
    second = translator.apply([kcm]).snapshot
    assert second is first
    db = second.service("shop/db")
    assert db is not None
    assert [e.workload_uid for e in db.endpoints] == ["shop/db"]


def test_a_slice_change_recomputes_its_service_only() -> None:
    translator = Translator()
    first = translator.apply(cluster(a_slice([endpoint("192.0.2.7")]))).snapshot
    second = translator.apply([a_slice([endpoint("192.0.2.7", ready=False)])]).snapshot
    assert changed_keys(first, second) == [("service", "shop/ext")]
    ext = second.service("shop/ext")
    assert ext is not None
    assert ext.endpoints == ()
    third = translator.apply(removes=[("EndpointSlice", "shop", "ext-abc")]).snapshot
    assert third is second  # already without endpoints
    fourth = translator.apply([a_slice([endpoint("192.0.2.8")])]).snapshot
    ext = fourth.service("shop/ext")
    assert ext is not None
    assert [e.ip for e in ext.endpoints] == ["192.0.2.8"]
    # The Service gains a selector: its pods count, its slices no longer.
    fifth = translator.apply([svc("ext", "shop", selector={"app": "db"}, ports=(PG,),
                                  cluster_ip="10.96.0.9")]).snapshot  # fmt: skip
    ext = fifth.service("shop/ext")
    assert ext is not None
    assert [e.workload_uid for e in ext.endpoints] == ["shop/db"]


# --- locality ------------------------------------------------------------------------------


def locality_of(workload: Workload | None) -> Locality | None:
    assert workload is not None
    return workload.locality


def test_a_workload_has_its_nodes_zone_and_follows_it() -> None:
    translator = Translator()
    first = translator.apply(cluster(m.Node(name="n2", labels=tuple(ZONED.items())))).snapshot
    assert locality_of(first.workload("shop/db")) == Locality(region="eu", zone="eu-1a")
    assert locality_of(first.workload("shop/client")) is None  # n1: no Node object
    moved = m.Node(name="n2", labels=(("topology.kubernetes.io/zone", "eu-1b"),))
    second = translator.apply([moved]).snapshot
    assert changed_keys(first, second) == [("workload", "shop/db")]
    assert locality_of(second.workload("shop/db")) == Locality(zone="eu-1b")
    third = translator.apply([m.Node(name="n2", labels=(*moved.labels, ("team", "x")))])
    assert third.snapshot is second  # a label that is not topology changes nothing
    fourth = translator.apply(removes=[("Node", "", "n2")]).snapshot
    assert locality_of(fourth.workload("shop/db")) is None


def test_locality_is_in_the_workloads_json_form() -> None:
    snapshot = translate(cluster(m.Node(name="n2", labels=tuple(ZONED.items()))), version=1)
    db = snapshot.snapshot.workload("shop/db")
    assert db is not None
    form = db.to_json()
    assert form["locality"] == {"region": "eu", "zone": "eu-1a", "subzone": ""}
    assert Workload.from_json(form) == db
