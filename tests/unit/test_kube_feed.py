"""Between the watch and the store: stripping API objects to what the mesh reads, which
resources feed which kind and which CRDs serve them, and the feed into the store."""

from __future__ import annotations

import dataclasses
from typing import Any

from k8s import manifests as m
from k8s.sources.feed import StoreFeed
from k8s.sources.resources import (
    CRD_RESOURCE,
    RESOURCES,
    chosen_version,
    resources_of,
    served_versions,
)
from k8s.sources.strip import strip, stripper
from k8s.sources.watch import Delete, Listed, Put, ResourceWatch, Unlisted
from k8s.store import ObjectStore

FULL_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "uid": "5f1c",
        "resourceVersion": "812",
        "creationTimestamp": "2026-12-06T10:00:00Z",
        "generateName": "web-",
        "labels": {"app": "web", "istio.io/dataplane-mode": "ambient"},
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{...}" * 1000,
            "ambit.io/note": "kept",
            "sidecar.istio.io/status": "kept too",
        },
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "uid": "1"}],
        "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
    },
    "spec": {
        "nodeName": "node-1",
        "serviceAccountName": "web",
        "volumes": [{"name": "token", "projected": {}}],
        "containers": [
            {
                "name": "app",
                "image": "registry.example/web:1",
                "env": [{"name": "SECRET", "value": "x" * 500}],
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "livenessProbe": {"httpGet": {"path": "/", "port": 8080}},
            }
        ],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}],
        "hostIP": "172.18.0.2",
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-06T10:00:01Z"},
        ],
        "containerStatuses": [{"name": "app", "ready": True}],
    },
}


def test_a_pod_is_stripped_to_what_the_mesh_reads() -> None:
    stripped = strip(FULL_POD, kind="Pod", api_version="v1")
    assert stripped["metadata"] == {
        "name": "web-1", "namespace": "shop", "uid": "5f1c", "resourceVersion": "812",
        "creationTimestamp": "2026-12-06T10:00:00Z",
        "labels": {"app": "web", "istio.io/dataplane-mode": "ambient"},
        "annotations": {"ambit.io/note": "kept", "sidecar.istio.io/status": "kept too"},
    }  # fmt: skip
    assert stripped["spec"] == {
        "nodeName": "node-1",
        "serviceAccountName": "web",
        "containers": [{"name": "app", "ports": FULL_POD["spec"]["containers"][0]["ports"]}],
    }
    assert stripped["status"] == {
        "phase": "Running", "podIP": "10.244.1.7",
        "conditions": [{"type": "Ready", "status": "True"}],
    }  # fmt: skip
    full, small = m.parse_object(FULL_POD), m.parse_object(stripped)
    assert isinstance(full, m.Pod)
    assert isinstance(small, m.Pod)
    assert dataclasses.replace(full, containers=small.containers, annotations=()) == (
        dataclasses.replace(small, annotations=())
    )
    assert small.named_ports == full.named_ports == (("http", 8080),)


def test_list_items_get_their_kind_and_api_version_from_the_resource() -> None:
    item = {"metadata": {"name": "shop", "managedFields": []}, "spec": {"finalizers": ["k"]}}
    assert stripper("Namespace", "v1")(item) == {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
    }  # fmt: skip


def test_a_service_keeps_selector_ports_and_cluster_ip() -> None:
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
        "spec": {
            "selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP", "name": "http"}],
            "sessionAffinity": "None", "type": "ClusterIP", "ipFamilies": ["IPv4"],
        },
        "status": {"loadBalancer": {}},
    }  # fmt: skip
    stripped = strip(service, kind="Service", api_version="v1")
    assert set(stripped["spec"]) == {"selector", "ports", "clusterIP"}
    assert "status" not in stripped
    assert m.parse_object(stripped) == m.parse_object(service)


def test_policies_keep_their_spec_whole_and_drop_status() -> None:
    policy = {
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny", "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]},
        "status": {"conditions": [{"type": "Accepted"}]},
    }  # fmt: skip
    stripped = strip(policy, kind="AuthorizationPolicy", api_version="security.istio.io/v1")
    assert stripped["spec"] == policy["spec"]
    assert "status" not in stripped


def test_resources_of_every_kind_ambit_first() -> None:
    names = [r.name for r in RESOURCES]
    assert names[:4] == ["namespaces", "serviceaccounts", "pods", "services"]
    assert names.index("authorizationpolicies.security.ambit.io") < names.index(
        "authorizationpolicies.security.istio.io"
    )
    assert {r.kind for r in RESOURCES} == {k.kind for k in m.KINDS}
    istio = next(r for r in RESOURCES if r.name == "peerauthentications.security.istio.io")
    assert istio.versions == ("v1", "v1beta1")
    assert istio.path("v1") == "/apis/security.istio.io/v1/peerauthentications"
    assert resources_of(["Pod"])[0].path("v1") == "/api/v1/pods"


def crd(name: str, *versions: tuple[str, bool], established: bool = True) -> dict[str, Any]:
    doc = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": name.partition(".")[2], "names": {"plural": name.partition(".")[0]},
                 "versions": [{"name": v, "served": s, "schema": {}} for v, s in versions]},
        "status": {"conditions": [{"type": "Established",
                                   "status": "True" if established else "False"}]},
    }  # fmt: skip
    return strip(doc, kind=CRD_RESOURCE.kind, api_version="apiextensions.k8s.io/v1")


def test_versions_are_chosen_from_what_the_crds_serve() -> None:
    served = served_versions([
        crd("peerauthentications.security.istio.io", ("v1beta1", True), ("v1", False)),
        crd("httproutes.gateway.networking.k8s.io", ("v1", True), ("v1beta1", True)),
        crd("grpcroutes.gateway.networking.k8s.io", ("v1", True), established=False),
    ])  # fmt: skip
    by_name = {r.name: r for r in RESOURCES}
    assert chosen_version(by_name["peerauthentications.security.istio.io"], served) == "v1beta1"
    assert chosen_version(by_name["httproutes.gateway.networking.k8s.io"], served) == "v1"
    assert chosen_version(by_name["grpcroutes.gateway.networking.k8s.io"], served) is None
    assert chosen_version(by_name["gateways.gateway.networking.k8s.io"], served) is None
    assert chosen_version(by_name["pods"], served) == "v1"


def policy(name: str, action: str, group: str = "security.istio.io") -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": f"{group}-{name}",
                     "resourceVersion": "1"},
        "spec": {"action": action},
    }  # fmt: skip


def test_the_feed_holds_the_gate_until_every_resource_of_a_kind_is_listed() -> None:
    store = ObjectStore(kinds=["AuthorizationPolicy"])
    ambit, istio = resources_of(["AuthorizationPolicy"])
    feed = StoreFeed(store, [ambit, istio])
    feed.apply(istio, [Put(("shop", "deny"), policy("deny", "DENY")), Listed()])
    assert store.unlisted() == ["AuthorizationPolicy"]  # ambit's are not listed yet
    assert [e.obj.name for e in store.entries()] == ["deny"]
    feed.apply(ambit, [Listed()])  # its CRD is absent: listed as empty
    assert store.unlisted() == []
    feed.apply(ambit, [Unlisted()])  # its CRD appeared
    assert store.unlisted() == ["AuthorizationPolicy"]


def test_ambit_policy_wins_over_istio_policy_of_the_same_name() -> None:
    store = ObjectStore(kinds=["AuthorizationPolicy"])
    ambit, istio = resources_of(["AuthorizationPolicy"])
    feed = StoreFeed(store, [ambit, istio])
    feed.apply(istio, [Put(("shop", "p"), policy("p", "DENY"))])
    feed.apply(ambit, [Put(("shop", "p"), policy("p", "ALLOW", "security.ambit.io"))])
    entry = store.get(("AuthorizationPolicy", "shop", "p"))
    assert entry is not None
    assert isinstance(entry.obj, m.AuthorizationPolicy)
    assert entry.obj.action == "ALLOW"
    feed.apply(ambit, [Delete(("shop", "p"), {})])  # Istio's shows again
    entry = store.get(("AuthorizationPolicy", "shop", "p"))
    assert entry is not None
    assert isinstance(entry.obj, m.AuthorizationPolicy)
    assert entry.obj.action == "DENY"
    feed.apply(istio, [Delete(("shop", "p"), {}, synthesized=True)])
    assert store.get(("AuthorizationPolicy", "shop", "p")) is None


def test_an_object_ambit_refuses_is_left_out_and_named_until_it_is_fixed() -> None:
    store = ObjectStore(kinds=["AuthorizationPolicy"])
    (_, istio) = resources_of(["AuthorizationPolicy"])
    feed = StoreFeed(store, [istio])
    feed.apply(istio, [Put(("shop", "p"), policy("p", "DENY"))])
    bad = policy("p", "DENY")
    bad["spec"]["surprise"] = 1
    feed.apply(istio, [Put(("shop", "p"), bad)])
    assert store.get(("AuthorizationPolicy", "shop", "p")) is None
    assert len(feed.errors) == 1
    assert "kubernetes: authorizationpolicies.security.istio.io shop/p" in feed.errors[0]
    assert "spec.surprise" in feed.errors[0]
    feed.apply(istio, [Put(("shop", "p"), policy("p", "DENY"))])
    assert feed.errors == []
    assert store.get(("AuthorizationPolicy", "shop", "p")) is not None


def test_watch_to_store_keeps_server_metadata_and_a_relist_deletes() -> None:
    """A pod listed through the machine and fed reaches the store with the API server's
    uid and resourceVersion; a 410 diff deletes it from the store."""
    (resource,) = resources_of(["Pod"])
    store = ObjectStore(kinds=["Pod"])
    feed = StoreFeed(store, [resource])
    w = ResourceWatch(strip=stripper("Pod", "v1"))
    w.start()
    feed.apply(resource, w.list_page([FULL_POD], "900", None).changes)
    assert store.complete
    entry = store.get(("Pod", "shop", "web-1"))
    assert entry is not None
    assert (entry.obj.uid, entry.obj.resource_version) == ("5f1c", "812")
    w.gone()
    feed.apply(resource, w.list_page([], "950", None).changes)
    assert store.get(("Pod", "shop", "web-1")) is None
