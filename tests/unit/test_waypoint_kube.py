"""The waypoint deployer's rendering for a cluster (``k8s.waypoint_kube``): each object
valid for the tested Kubernetes, the pod template a user finds with ``kubectl get -o
yaml`` (the command ``ambit`` parses, the token and bundle mounted where its flags
point, probes, ports, the downward API, out of capture), the Gateway's infrastructure
labels and annotations on everything, and the plan for a set of Gateways."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from ambit.cli import build_parser
from k8s import manifests as m
from k8s.waypoint_kube import (
    KubeDeployerSettings,
    Leaver,
    cluster_settings,
    gateway_class_document,
    kube_documents,
    owned_by,
    plan,
)
from tests.k8s_builders import gateway

KUBERNETES_VERSION = "1.36"  # tests/unit/test_install.py checks it is tests/kube's
SETTINGS = KubeDeployerSettings(image="registry.example/ambit:9", classes=("ambit-waypoint",))
GATEWAY_YAML = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, uid: u-1, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: ambit-waypoint
  infrastructure:
    labels: {team: blue, gateway.networking.k8s.io/gateway-name: spoofed}
    annotations: {example.com/owner: ops}
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def edge() -> m.Gateway:
    (obj,) = m.loads(GATEWAY_YAML)
    assert isinstance(obj, m.Gateway)
    return obj


def by_kind(gw: m.Gateway) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in kube_documents(gw, SETTINGS)}


def test_a_gateway_reads_its_infrastructure() -> None:
    gw = edge()
    assert gw.infrastructure_labels == (
        ("gateway.networking.k8s.io/gateway-name", "spoofed"), ("team", "blue"))  # fmt: skip
    assert gw.infrastructure_annotations == (("example.com/owner", "ops"),)
    too_many = GATEWAY_YAML.replace("team: blue", ", ".join(f"l{i}: v" for i in range(9)))
    with pytest.raises(m.ManifestError, match=r"spec\.infrastructure\.labels: at most 8"):
        m.loads(too_many)


def test_every_object_is_valid_for_the_tested_kubernetes() -> None:
    docs = kube_documents(edge(), SETTINGS)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Service", "Deployment"]
    for doc in docs:
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == "1.36"


def test_each_object_is_owned_by_its_gateway_and_carries_its_infrastructure() -> None:
    for doc in kube_documents(edge(), SETTINGS):
        meta = doc["metadata"]
        assert (meta["name"], meta["namespace"]) == ("edge", "shop")
        assert meta["ownerReferences"] == [{
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "edge",
            "controller": True, "blockOwnerDeletion": True, "uid": "u-1",
        }]  # fmt: skip
        labels = meta["labels"]
        assert labels["team"] == "blue"
        assert labels["gateway.networking.k8s.io/gateway-name"] == "edge", "ours win"
        assert labels["ambit.io/managed-by"] == "waypoint-deployer"
        assert meta["annotations"] == {"example.com/owner": "ops"}
        assert owned_by(doc, Leaver("shop", "edge", "u-1"))
        assert not owned_by(doc, Leaver("shop", "edge", "u-2"))
    service = by_kind(edge())["Service"]
    assert service["metadata"]["labels"]["istio.io/waypoint-for"] == "service"
    assert [(p["name"], p["port"], p["appProtocol"]) for p in service["spec"]["ports"]] == [
        ("mesh", 15008, "all"), ("status-port", 15021, "tcp")]  # fmt: skip


def test_the_pod_template_runs_the_waypoint_out_of_capture() -> None:
    deployment = by_kind(edge())["Deployment"]
    spec = deployment["spec"]
    assert "replicas" not in spec, "left to the API server's default, kubectl scale, an HPA"
    assert spec["selector"] == {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "edge"}}
    template = spec["template"]
    labels = template["metadata"]["labels"]
    assert labels["ambit.io/dataplane-mode"] == "none"
    assert labels["team"] == "blue"
    assert labels["gateway.networking.k8s.io/gateway-name"] == "edge"
    assert template["metadata"]["annotations"] == {
        "example.com/owner": "ops", "prometheus.io/scrape": "true",
        "prometheus.io/port": "15020", "prometheus.io/path": "/metrics",
    }  # fmt: skip
    pod = template["spec"]
    assert pod["serviceAccountName"] == "edge"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/ambit:9"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "mesh": 15008, "status-port": 15021, "metrics": 15020}  # fmt: skip
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                   "POD_IP": "status.podIP", "NODE_NAME": "spec.nodeName",
                   "SERVICE_ACCOUNT": "spec.serviceAccountName"}  # fmt: skip


def _mounted(pod: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volume (and the item or source in it) that puts a file at ``path``."""
    (container,) = pod["containers"]
    (mount,) = [v for v in container["volumeMounts"] if v["mountPath"] == str(path.parent)]
    volumes: list[dict[str, Any]] = pod["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    return volume


def test_the_command_is_ambits_and_its_files_are_mounted_where_its_flags_point() -> None:
    pod = by_kind(edge())["Deployment"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[0] == "ambit"
    args = build_parser().parse_args(command[1:])
    assert (args.namespace, args.name) == ("shop", "edge")
    assert args.control_plane == "ambit-controlplane.ambit-system.svc:15010"
    assert args.ca == "ambit-controlplane.ambit-system.svc:15012"

    token = _mounted(pod, args.token_file)["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "ambit-ca"
    assert token["path"] == args.token_file.name
    bundle = _mounted(pod, args.trust_bundle)["configMap"]
    assert bundle["name"] == "ambit-ca-root-cert"
    assert bundle["items"] == [{"key": "root-cert.pem", "path": args.trust_bundle.name}]
    assert int(pod["terminationGracePeriodSeconds"]) > args.drain_seconds


def test_the_plan_wants_the_class_and_each_served_gateways_objects() -> None:
    ingress = dataclasses.replace(gateway("web", "shop", gateway_class="nginx"), uid="u-9")
    istios = dataclasses.replace(gateway("old", "shop", gateway_class="istio-waypoint"), uid="u-8")
    long_name = dataclasses.replace(edge(), name="x" * 64, uid="u-7")
    made = plan([edge(), ingress, istios, long_name], SETTINGS)
    assert list(made.wanted) == [
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ambit-waypoint",
        "/api/v1/namespaces/shop/serviceaccounts/edge",
        "/api/v1/namespaces/shop/services/edge",
        "/apis/apps/v1/namespaces/shop/deployments/edge",
    ]
    assert made.wanted[next(iter(made.wanted))] == gateway_class_document()
    assert gateway_class_document()["spec"]["controllerName"] == "ambit.io/mesh-controller"
    assert made.leavers == (Leaver("shop", "web", "u-9"), Leaver("shop", "old", "u-8"))
    assert made.leavers[0].paths[2] == "/apis/apps/v1/namespaces/shop/deployments/web"
    (why,) = made.refused.values()
    assert "rename the Gateway" in why
    assert plan([], SETTINGS).wanted == {made_path: gateway_class_document()
                                         for made_path in list(made.wanted)[:1]}  # fmt: skip


def test_a_changed_infrastructure_label_or_uid_changes_the_documents() -> None:
    before = kube_documents(edge(), SETTINGS)
    relabelled = dataclasses.replace(edge(), infrastructure_labels=(("team", "red"),))
    assert kube_documents(relabelled, SETTINGS) != before
    assert kube_documents(dataclasses.replace(edge(), uid="u-2"), SETTINGS) != before
    assert kube_documents(edge(), SETTINGS) == before, "rendering is deterministic"


def test_the_control_planes_waypoint_image_is_for_kubernetes_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["controlplane", "--source", "files", "-f", "x.yaml", "--ca-dir", "ca",
            "--waypoint-image", "registry.example/ambit:9"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert args.run(args) == 2
    assert "--waypoint-image is for --source kubernetes" in capsys.readouterr().err
    settings = cluster_settings("registry.example/ambit:9", "example.org")
    deployment = kube_documents(edge(), settings)[2]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/ambit:9"
    args = build_parser().parse_args(container["command"][1:])
    assert args.trust_domain == "example.org"


def test_istio_waypoint_gateways_are_deployed_unless_istio_claims_their_class() -> None:
    """Istio's manifests work unchanged: an ``istio-waypoint`` Gateway is ambit's to deploy
    while no GatewayClass of that name names another controller; once Istio's does
    (Istio installed beside ambit), ambit leaves those Gateways to it."""
    settings = KubeDeployerSettings(image="registry.example/ambit:9")  # the default classes
    istios = dataclasses.replace(gateway("old", "shop", gateway_class="istio-waypoint"), uid="u-8")
    alone = plan([istios], settings)
    assert "/apis/apps/v1/namespaces/shop/deployments/old" in alone.wanted
    istio_class = m.GatewayClass(name="istio-waypoint", controller_name="istio.io/mesh-controller")
    beside = plan([istios, istio_class], settings)
    assert "/apis/apps/v1/namespaces/shop/deployments/old" not in beside.wanted
    assert beside.leavers == (Leaver("shop", "old", "u-8"),)
    ours = m.GatewayClass(name="istio-waypoint", controller_name="ambit.io/mesh-controller")
    assert "/apis/apps/v1/namespaces/shop/deployments/old" in plan([istios, ours], settings).wanted
