"""The waypoint deployer: what a waypoint Gateway becomes (a ServiceAccount, a Service and
a Pod named after it, owned by it), and that translation then sees the waypoint run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from k8s import manifests as m
from k8s.controlplane import write_conditions
from k8s.store import ObjectStore
from k8s.translate import translate
from k8s.waypoint_deployer import DeployerSettings, deploy, managed, pod_name, waypoint_objects
from mesh.identity import SpiffeId
from tests.k8s_builders import gateway, ns, pod, svc

SETTINGS = DeployerSettings(
    control_plane="10.244.0.1:15010",
    ca="10.244.0.1:15012",
    token_dir=Path("/run/ambit/mesh/serviceaccounts"),
    trust_bundle=Path("/run/ambit/mesh/bundle.pem"),
    drain_seconds=1.0,
    python="/usr/bin/python3",
    env=(("PYTHONPATH", "/src/ambit"),),
)


def test_a_waypoint_gateway_becomes_its_service_account_service_and_pod() -> None:
    made = waypoint_objects(gateway("edge", "shop", labels={"istio.io/waypoint-for": "all"}),
                            SETTINGS)  # fmt: skip
    assert made is not None
    account, service, waypoint = made.objects
    assert (account.namespace, account.name) == ("shop", "edge")
    assert (service.namespace, service.name) == ("shop", "edge")
    assert dict(service.selector or ()) == {"gateway.networking.k8s.io/gateway-name": "edge"}
    assert [(p.name, p.port, p.target_port, p.app_protocol) for p in service.ports] == [
        ("mesh", 15008, 15008, "all"),
        ("status-port", 15021, 15021, "tcp"),
    ]
    assert dict(service.labels)["istio.io/waypoint-for"] == "all"
    assert waypoint.name == pod_name(gateway("edge", "shop"))
    assert waypoint.name.startswith("edge-")
    assert waypoint.service_account == "edge"
    assert dict(waypoint.labels)["gateway.networking.k8s.io/gateway-name"] == "edge"
    assert dict(waypoint.env) == {"PYTHONPATH": "/src/ambit"}
    assert waypoint.tcp_ports == (15008, 15021)
    assert waypoint.argv == (
        "/usr/bin/python3", "-m", "ambit.cli", "--log-format", "json", "waypoint", "run",
        "--namespace", "shop", "--name", "edge",
        "--control-plane", "10.244.0.1:15010", "--ca", "10.244.0.1:15012",
        "--token-file", "/run/ambit/mesh/serviceaccounts/shop/edge/token",
        "--trust-bundle", "/run/ambit/mesh/bundle.pem", "--trust-domain", "cluster.local",
        "--drain-seconds", "1",
    )  # fmt: skip
    assert all(managed(o) for o in made.objects)


def test_the_pod_name_is_stable_and_each_object_names_its_owner() -> None:
    first = waypoint_objects(gateway("edge", "shop"), SETTINGS)
    again = waypoint_objects(dataclasses.replace(gateway("edge", "shop"), uid="u-1"), SETTINGS)
    assert first is not None
    assert again is not None
    assert first.pod.name == again.pod.name
    assert first.pod.name != pod_name(gateway("edge", "other"))
    assert first.objects == again.objects, "the uid is in the documents only"
    owners = [doc["metadata"]["ownerReferences"] for doc in again.documents]
    assert owners == [[{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "name": "edge", "controller": True, "blockOwnerDeletion": True,
                        "uid": "u-1"}]] * 3  # fmt: skip


def test_a_gateway_of_another_class_gets_nothing() -> None:
    ingress = gateway("edge", "shop", gateway_class="some-ingress")
    assert waypoint_objects(ingress, SETTINGS) is None
    objects: list[m.K8sObject] = [ns("shop"), ingress, pod("web", "shop"), svc("web", "shop")]
    assert deploy(objects, SETTINGS) == []


def test_a_gateway_name_that_cannot_name_a_service_is_an_error() -> None:
    found = deploy([gateway("7-edge", "shop")], SETTINGS)
    assert len(found) == 1
    assert found[0].obj is None
    assert "rename the Gateway" in (found[0].error or "")


def test_once_its_pod_runs_the_waypoint_is_programmed_and_bound() -> None:
    objects: list[m.K8sObject] = [
        ns("shop", ambient=False, labels={"istio.io/use-waypoint": "edge"}),
        gateway("edge", "shop"),
        pod("web", "shop", ip="10.244.1.10"),
        svc("web", "shop", cluster_ip="10.96.0.10"),
    ]
    for doc in deploy(objects, SETTINGS):
        obj = doc.obj
        if isinstance(obj, m.Pod):
            obj = obj.with_ip("10.244.1.20")
        elif isinstance(obj, m.Service):
            obj = obj.with_cluster_ip("10.96.0.20")
        assert obj is not None
        objects.append(obj)
    translation = translate(objects, version=1)
    snapshot = translation.snapshot
    waypoint = snapshot.workload(f"shop/{pod_name(gateway('edge', 'shop'))}")
    assert waypoint is not None
    assert waypoint.native_tunnel
    assert waypoint.identity == SpiffeId("cluster.local", "shop", "edge")
    web = snapshot.service("shop/web")
    assert web is not None
    assert web.waypoint == "shop/edge"
    store = ObjectStore()
    for obj in objects:
        store.put(obj)
    write_conditions(store, translation)
    entry = store.get(("Gateway", "shop", "edge"))
    assert entry is not None
    programmed = entry.condition("Programmed")
    assert programmed is not None
    assert programmed.status == "True"
