"""Local mode runs waypoints, the pure parts: the deployer's objects are derived from the
applied ones and replaced or removed with their Gateway, a waypoint's pod is planned in
the mesh but not captured (no node agent captures it either), it gets its own 0600
service-account token in the tokens file the control plane reads, and it is supervised
as ``waypoint/NS/NAME``."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

from ambit import tables
from ca.auth import service_account_caller
from k8s import manifests as m
from k8s.local.config import ClusterConfig
from k8s.local.controllers import derive, with_derived
from k8s.local.plan import Allocation, plan_cluster
from k8s.localmesh import LocalMesh
from k8s.store import ObjectRef, ref_of
from k8s.waypoint_deployer import pod_name
from node.pods import pod_view, skip_reason
from tests.k8s_builders import gateway, ns, pod


def config(tmp_path: Path) -> ClusterConfig:
    return ClusterConfig(
        tmp_path, "t1", ipaddress.IPv4Network("10.244.0.0/16"),
        ipaddress.IPv4Network("10.96.0.0/16"),
    )  # fmt: skip


def shop() -> dict[ObjectRef, m.K8sObject]:
    objects: list[m.K8sObject] = [ns("shop", ambient=False), gateway("edge", "shop"),
                                  pod("web", "shop", ip=None)]  # fmt: skip
    return {ref_of(o): o for o in objects}


def test_a_gateway_brings_its_objects_and_takes_them_away(tmp_path: Path) -> None:
    mesh = LocalMesh()
    hooks = mesh.hooks()
    objects = shop()
    derived = derive(hooks, config(tmp_path), objects, set())
    edge_pod = ("Pod", "shop", pod_name(gateway("edge", "shop")))
    expected = {("ServiceAccount", "shop", "edge"), ("Service", "shop", "edge"), edge_pod}
    assert set(derived.documents) == expected
    with_derived(objects, derived, set())
    assert expected <= objects.keys()

    del objects[("Gateway", "shop", "edge")]
    again = derive(hooks, config(tmp_path), objects, expected)
    assert again.documents == {}, "derived only from what users applied"
    with_derived(objects, again, expected)
    assert set(objects) == {("Namespace", "", "shop"), ("Pod", "shop", "web")}


def test_a_waypoint_pod_is_planned_in_the_mesh_but_never_captured(tmp_path: Path) -> None:
    objects = shop()
    with_derived(objects, derive(LocalMesh().hooks(), config(tmp_path), objects, set()), ())
    plan = plan_cluster(config(tmp_path), objects.values(), Allocation())
    by_name = {p.spec.name: p for p in plan.pods}
    waypoint = by_name[pod_name(gateway("edge", "shop"))]
    assert (waypoint.meshed, waypoint.native_tunnel) == (True, True)
    assert waypoint.identity == "spiffe://cluster.local/ns/shop/sa/edge"
    assert (by_name["web"].meshed, by_name["web"].native_tunnel) == (False, False)
    row = {"meshed": True, "native_tunnel": True, "captured": None}
    assert tables._captured(row) == "native"
    # The node agent's rule, as on Kubernetes: the deployer labels the pod out of capture.
    ambient = {"ambit.io/dataplane-mode": "ambient"}
    view = pod_view({"metadata": {"namespace": "shop", "labels": dict(waypoint.spec.labels)}})
    assert skip_reason(view, ambient, frozenset()) is not None


def test_each_waypoint_gets_its_own_token_file_and_tokens_entry(tmp_path: Path) -> None:
    mesh = LocalMesh()
    cluster = config(tmp_path)
    derive(mesh.hooks(), cluster, shop(), set())
    token_file = tmp_path / "mesh" / "serviceaccounts" / "shop" / "edge" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    tokens_file = tmp_path / "mesh" / "tokens.json"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    caller = service_account_caller("shop", "edge")
    assert json.loads(tokens_file.read_text()) == {caller: token_file.read_text()}
    assert mesh.tokens.caller_for(token_file.read_text()) == caller
    pods = [d.obj for d in derive(mesh.hooks(), cluster, shop(), set()).documents.values()]
    waypoint = next(p for p in pods if isinstance(p, m.Pod))
    flags = dict(zip(waypoint.argv[7::2], waypoint.argv[8::2], strict=True))
    assert flags["--token-file"] == str(token_file)
    assert flags["--trust-bundle"] == str(tmp_path / "mesh" / "bundle.pem")
    assert flags["--control-plane"] == "10.244.0.1:15010"
    assert mesh.pod_component(waypoint) == ("waypoint/shop/edge", 2.0)
    assert mesh.pod_component(pod("web", "shop")) is None
    assert json.loads(tokens_file.read_text()) == {caller: token_file.read_text()}, "same token"
