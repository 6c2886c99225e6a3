"""``ambit controlplane --source kubernetes --kubeconfig PATH`` against the real API
server, as a process, with a ztunnel subscribed on loopback: it publishes what
``ambit controlplane --source files`` publishes for the same objects (examples/demo.yaml,
a manifest rich in policies, waypoint and route, and a Service without a selector
with its EndpointSlices and a zoned Node), with the pods' IPs and the
Services' VIPs (``spec.clusterIP``) fixed by the test, and the same conditions in its
status file; a pod's new IP and its deletion reach the ztunnel; restarted while the
objects change, it resyncs the ztunnel that stayed subscribed.

On the cluster the harness plays kubelet (``kubelet.set_pod_running``); in the files
the same pods carry the same status. Snapshots are compared on the test's namespace
(the API source also sees the rest of the cluster)."""

from __future__ import annotations

import difflib
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from mesh.identity import SpiffeId
from mesh.model import Endpoint, MeshSnapshot
from tests.kube import crds
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import REPO, Cluster
from tests.kube.kubelet import create_node, remove_pod, set_pod_running
from tests.kube.planes import (
    TD,
    PlaneProcess,
    conditions_in,
    in_namespace,
    running,
    ztunnel,
    ztunnel_pods,
)
from tests.waiting import wait_until
from ztunnel.plan import Direct, Passthrough, Pick, plan_outbound

pytestmark = pytest.mark.kube

SECONDS = 30.0  # a change's way from the API server to a ztunnel: about a second
POLICIES = (REPO / "tests" / "kube" / "policies.yaml").read_text()


def objects(text: str, ns: str, nodes: dict[str, str]) -> list[Obj]:
    """The documents of ``text`` moved to namespace ``ns`` and to the test's nodes."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = ns
        elif "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = ns
        if doc["kind"] == "Pod" and "nodeName" in doc["spec"]:
            doc["spec"]["nodeName"] = nodes[doc["spec"]["nodeName"]]
    return docs


def fixed_addresses(docs: list[Obj]) -> tuple[dict[str, str], dict[str, str]]:
    """A pod IP per Pod and a VIP per Service, chosen at random (earlier tests' objects
    are still around: an address keeps its first holder)."""
    net = f"10.{secrets.randbelow(200) + 32}.{secrets.randbelow(256)}."
    pods = [d["metadata"]["name"] for d in docs if d["kind"] == "Pod"]
    services = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    vip = f"10.96.{secrets.randbelow(250) + 2}."  # in the cluster's service CIDR
    return (
        {name: f"{net}{i + 10}" for i, name in enumerate(pods)},
        {name: f"{vip}{i + 10}" for i, name in enumerate(services)},
    )


def as_files(docs: list[Obj], pod_ips: dict[str, str], vips: dict[str, str]) -> str:
    """The manifests ``--source files`` reads: pods with the status the harness writes
    on the cluster, Services with their VIP, each object with the creation time the API
    server gave it (:func:`apply`; routes carry it into the snapshot: the oldest wins a
    conflict)."""
    out = []
    for doc in deepcopy(docs):
        if doc["kind"] == "Pod":
            doc["status"] = {
                "phase": "Running",
                "podIP": pod_ips[doc["metadata"]["name"]],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        elif doc["kind"] == "Service":
            doc["spec"]["clusterIP"] = vips[doc["metadata"]["name"]]
        out.append(doc)
    return yaml.safe_dump_all(out)


async def apply(
    admin: KubeAdmin, docs: list[Obj], pod_ips: dict[str, str], vips: dict[str, str]
) -> None:
    """Create the objects on the cluster (the test's Namespace exists: it is labelled),
    then play kubelet for each pod. Each document gets the ``creationTimestamp`` the API
    server gave its object."""
    for doc in docs:
        if doc["kind"] == "Namespace":
            labels = {"metadata": {"labels": doc["metadata"].get("labels", {})}}
            created = await admin.patch("v1", "Namespace", doc["metadata"]["name"], labels)
        else:
            obj = deepcopy(doc)
            if doc["kind"] == "Service":
                obj["spec"]["clusterIP"] = vips[doc["metadata"]["name"]]
            created = await admin.create(obj)
        doc["metadata"]["creationTimestamp"] = created["metadata"]["creationTimestamp"]
    for doc in docs:
        if doc["kind"] == "Pod":
            name = doc["metadata"]["name"]
            await set_pod_running(admin, doc["metadata"]["namespace"], name, pod_ips[name])


@pytest.fixture
async def nodes(kube_admin: KubeAdmin, kube_ns: str) -> AsyncIterator[dict[str, str]]:
    """The manifests' node names to this test's own Nodes (deleted after it)."""
    names = {"node-1": f"{kube_ns}-node-1", "node-2": f"{kube_ns}-node-2"}
    with trio.fail_after(20):
        for name in names.values():
            await create_node(kube_admin, name)
    yield names
    with trio.fail_after(20):
        for name in names.values():
            with suppress(NotFound):
                await kube_admin.delete("v1", "Node", name)


@pytest.fixture
async def ztunnels(
    kube_admin: KubeAdmin, kube_ns: str, nodes: dict[str, str]
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The ztunnels' namespace (apart from the test's, so their pods are not in the
    config compared) and each node's ztunnel token; the namespace deleted after."""
    ns = f"{kube_ns}-zt"
    with trio.fail_after(60):
        tokens = await ztunnel_pods(kube_admin, ns, list(nodes.values()))
    yield ns, tokens
    with trio.fail_after(30), suppress(NotFound):
        await kube_admin.delete("v1", "Namespace", ns)


def planes(
    tmp_path: Path, cluster: Cluster, files: str, nodes: dict[str, str],
    ztunnels: tuple[str, dict[str, str]],
) -> tuple[PlaneProcess, PlaneProcess]:  # fmt: skip
    """The files source, with node tokens; the API server's, where a ztunnel shows its
    pod's token, reviewed by the API server, and gets only the view of its pod's node."""
    tokens = {node: secrets.token_hex(8) for node in nodes.values()}
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "objects.yaml").write_text(files)
    from_files = PlaneProcess(tmp_path / "files", ["-f", str(tmp_path / "manifests")], dict(tokens))
    ns, pod_tokens = ztunnels
    from_api = PlaneProcess(
        tmp_path / "kube",
        ["--source", "kubernetes", "--kubeconfig", str(cluster.kubeconfig),
         "--ztunnel-service-account", f"{ns}/ztunnel"],
        dict(pod_tokens), ztunnel=SpiffeId(TD, ns, "ztunnel"),
    )  # fmt: skip
    return from_files, from_api


async def agree(
    expected: list[MeshSnapshot], received: list[MeshSnapshot], ns: str
) -> dict[str, list[Any]]:
    """Wait until the last snapshot ``received`` says of ``ns`` what the last
    ``expected`` does; that, or the assertion's diff after ``SECONDS``."""
    want = in_namespace(expected[-1], ns)
    with suppress(trio.TooSlowError):
        await wait_until(lambda: in_namespace(received[-1], ns) == want, seconds=SECONDS)
    got = in_namespace(received[-1], ns)
    assert got == want, "\n".join(difflib.unified_diff(
        json.dumps(want, indent=1, sort_keys=True).splitlines(),
        json.dumps(got, indent=1, sort_keys=True).splitlines(),
        "--source files", "--source kubernetes", lineterm="",
    ))  # fmt: skip
    return want


async def wait_snapshot(received: list[MeshSnapshot], ns: str, holds: Any) -> dict[str, Any]:
    await wait_until(lambda: holds(in_namespace(received[-1], ns)), seconds=SECONDS)
    return in_namespace(received[-1], ns)


def ips(view: dict[str, list[Any]]) -> dict[str, str]:
    return {w["name"]: w["ip"] for w in view["workloads"]}


def endpoint_ips(view: dict[str, list[Any]], service: str) -> list[str]:
    (svc,) = [s for s in view["services"] if s["name"] == service]
    return sorted(e["ip"] for e in svc["endpoints"])


async def test_demo_as_files_and_from_the_api_server_is_one_config_that_follows_changes(
    kube_cluster: Cluster,
    kube_admin: KubeAdmin,
    kube_ns: str,
    nodes: dict[str, str],
    ztunnels: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    docs = objects((REPO / "examples" / "demo.yaml").read_text(), kube_ns, nodes)
    pod_ips, vips = fixed_addresses(docs)
    node = nodes["node-1"]
    with trio.fail_after(150):
        await apply(kube_admin, docs, pod_ips, vips)
        files = as_files(docs, pod_ips, vips)
        from_files, from_api = planes(tmp_path, kube_cluster, files, nodes, ztunnels)
        async with running(from_files), ztunnel(from_files, node) as expected:
            try:
                await from_api.start()
                async with ztunnel(from_api, node) as received:
                    view = await agree(expected, received, kube_ns)
                    assert ips(view) == {"client": pod_ips["client"], "server": pod_ips["server"]}
                    assert [w["protocol"] for w in view["workloads"]] == ["HBONE", "HBONE"]
                    assert [s["vip"] for s in view["services"]] == [vips["server"]]

                    # A pod's new IP reaches the ztunnel, with the Service's endpoint.
                    moved = pod_ips["server"].rpartition(".")[0] + ".200"
                    await set_pod_running(kube_admin, kube_ns, "server", moved)
                    view = await wait_snapshot(
                        received, kube_ns, lambda v: ips(v)["server"] == moved
                    )
                    assert endpoint_ips(view, "server") == [moved]

                    # A deleted pod leaves it.
                    await kube_admin.delete("v1", "Pod", "client", kube_ns)
                    await remove_pod(kube_admin, kube_ns, "client")
                    await wait_snapshot(received, kube_ns, lambda v: "client" not in ips(v))

                    # Restarted while the objects change: the ztunnel stays subscribed and
                    # is sent what the API server holds now.
                    before = len(received)
                    await from_api.stop()
                    (late,) = deepcopy(
                        [
                            d
                            for d in docs
                            if d["kind"] == "Pod" and d["spec"]["serviceAccountName"] == "server"
                        ]
                    )
                    late["metadata"]["name"] = "late"
                    late["spec"]["nodeName"] = nodes["node-2"]
                    await kube_admin.create(late)
                    late_ip = pod_ips["server"].rpartition(".")[0] + ".201"
                    await set_pod_running(kube_admin, kube_ns, "late", late_ip)
                    await kube_admin.delete("v1", "Pod", "server", kube_ns)
                    await remove_pod(kube_admin, kube_ns, "server")
                    await from_api.start()
                    view = await wait_snapshot(received, kube_ns, lambda v: ips(v) == {
                        "late": late_ip})  # fmt: skip
                    assert endpoint_ips(view, "server") == [late_ip]
                    assert len(received) > before
            finally:
                await from_api.stop()


async def test_policies_waypoint_and_route_as_files_and_from_the_api_server_agree(
    kube_cluster: Cluster,
    kube_admin: KubeAdmin,
    kube_ns: str,
    nodes: dict[str, str],
    ztunnels: tuple[str, dict[str, str]],
    gateway_crds: list[str],
    tmp_path: Path,
) -> None:
    docs = objects(POLICIES, kube_ns, nodes)
    pod_ips, vips = fixed_addresses(docs)
    node = nodes["node-1"]
    with trio.fail_after(150):
        await crds.install(kube_admin, crds.policy_crds("security.istio.io"))
        await apply(kube_admin, docs, pod_ips, vips)
        files = as_files(docs, pod_ips, vips)
        from_files, from_api = planes(tmp_path, kube_cluster, files, nodes, ztunnels)
        async with (
            running(from_files),
            running(from_api),
            ztunnel(from_files, node) as expected,
            ztunnel(from_api, node) as received,
        ):
            view = await agree(expected, received, kube_ns)
            kinds = {name: len(entries) for name, entries in view.items()}
            assert kinds == {  # at-waypoint is the waypoint's: no ztunnel is sent it
                "workloads": 4, "services": 2, "authorizations": 3, "peer_authentications": 2,
                "request_authentications": 1, "gateways": 1, "http_routes": 1, "grpc_routes": 0,
                "destination_rules": 0, "backend_traffic_policies": 0, "fault_injections": 0,
                "local_rate_limits": 0,
            }  # fmt: skip

            # The same conditions on the same objects, once both have written them.
            want = conditions_in(from_files.status(), kube_ns)
            assert want, "the files source's status has no conditions"
            with suppress(trio.TooSlowError):
                await wait_until(
                    lambda: conditions_in(from_api.status(), kube_ns) == want, seconds=SECONDS
                )
            assert conditions_in(from_api.status(), kube_ns) == want
            refused = [r for r in from_api.status()["refused"] if kube_ns in r]
            assert refused == from_files.status()["refused"] == []


SLICES = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-1
  containers: [{name: app, image: example.invalid/client:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-1
  containers: [{name: app, image: example.invalid/db:1, ports: [{containerPort: 6432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {selector: {app: db}, ports: [{name: pg, port: 5432, targetPort: 6432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {ports: [{name: pg, port: 5432, targetPort: 6432}]}
"""
ZONE = {"topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "eu-west-1a"}


def endpoint_slice(ns: str, name: str, service: str, endpoints: list[Obj], port: int = 6432) -> Obj:
    """A slice as an operator (or a VM registry) writes one for a Service without a
    selector; not the controller manager's (which manages only its own)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "tests.ambit.io"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }  # fmt: skip


def slice_endpoint(address: str, *, pod: tuple[str, str] | None = None, ready: bool = True) -> Obj:
    endpoint: Obj = {
        "addresses": [address],
        "conditions": {"ready": ready, "serving": ready, "terminating": not ready},
    }
    if pod is not None:
        endpoint["targetRef"] = {"kind": "Pod", "namespace": pod[0], "name": pod[1]}
    return endpoint  # fmt: skip


def backends(snapshot: MeshSnapshot, ns: str, service: str, vip: str) -> dict[str, Any]:
    """What a ztunnel does with a connection of ``client`` to ``vip:5432``, for each
    endpoint of the Service: its plan (HBONE to a pod, or plain TCP) by endpoint uid."""
    client = snapshot.workload(f"{ns}/client")
    svc = snapshot.service(f"{ns}/{service}")
    assert client is not None
    assert svc is not None
    return {
        e.workload_uid: plan_outbound(snapshot, client, vip, 5432, pick=_always(e))
        for e in svc.endpoints
    }


def _always(endpoint: Endpoint) -> Pick:
    def pick(_candidates: Sequence[Endpoint]) -> Endpoint:
        return endpoint

    return pick


async def test_a_selectorless_services_endpoints_are_its_slices_and_a_workload_has_its_nodes_zone(
    kube_cluster: Cluster,
    kube_admin: KubeAdmin,
    kube_ns: str,
    nodes: dict[str, str],
    ztunnels: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    ns, node = kube_ns, nodes["node-1"]
    docs = objects(SLICES, ns, nodes)
    pod_ips, vips = fixed_addresses(docs)
    outside = f"192.0.2.{secrets.randbelow(250) + 2}"  # a VM's address: no pod
    db = slice_endpoint(pod_ips["db"], pod=(ns, "db"))
    docs += [
        endpoint_slice(ns, "ext-1", "ext", [db, slice_endpoint(outside)]),
        # A Service with a selector takes its endpoints from its pods, never from slices:
        # not this one, nor the controller manager's.
        endpoint_slice(ns, "db-extra", "db", [slice_endpoint(outside)]),
    ]
    zoned = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": ZONE}}
    with trio.fail_after(150):
        await kube_admin.patch("v1", "Node", node, {"metadata": {"labels": ZONE}})
        await apply(kube_admin, docs, pod_ips, vips)
        managed = (
            "kubernetes.io/service-name=db,"
            "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
        )

        async def kcm_slice_of_db() -> bool:
            found = await kube_admin.list(
                "discovery.k8s.io/v1", "EndpointSlice", ns, label_selector=managed
            )
            return any(e["addresses"] == [pod_ips["db"]] for s in found
                       for e in s.get("endpoints") or ())  # fmt: skip

        await wait_for(kcm_slice_of_db, seconds=SECONDS)  # the controller manager's own
        for doc in docs:  # the API server copies a node's topology labels to its pods
            if doc["kind"] == "Pod":
                held = await kube_admin.get("v1", "Pod", doc["metadata"]["name"], ns)
                doc["metadata"]["labels"] = held["metadata"].get("labels", {})
        files = as_files(docs, pod_ips, vips) + "---\n" + yaml.safe_dump(zoned)
        from_files, from_api = planes(tmp_path, kube_cluster, files, nodes, ztunnels)
        async with (
            running(from_files),
            running(from_api),
            ztunnel(from_files, node) as expected,
            ztunnel(from_api, node) as received,
        ):
            view = await agree(expected, received, ns)
            locality = {"region": "eu-west", "zone": "eu-west-1a", "subzone": ""}
            assert [(w["name"], w["locality"]) for w in view["workloads"]] == [
                ("client", locality), ("db", locality)]  # fmt: skip
            assert endpoint_ips(view, "db") == [pod_ips["db"]]
            assert endpoint_ips(view, "ext") == sorted([pod_ips["db"], outside])
            plans = backends(received[-1], ns, "ext", vips["ext"])
            to_pod, to_vm = plans[f"{ns}/db"], plans[f"{ns}/ext/{outside}"]
            assert isinstance(to_pod, Direct)  # HBONE, proving the pod's identity
            assert (to_pod.dial, str(to_pod.expected_identity)) == (
                (pod_ips["db"], 15008),
                f"spiffe://cluster.local/ns/{ns}/sa/default",
            )
            assert isinstance(to_vm, Passthrough)  # outside the mesh: plain TCP
            assert (to_vm.dial, to_vm.dst_workload) == ((outside, 6432), None)
            # Every object of the test read, the controller manager's slices and the Nodes too.
            assert [r for r in from_api.status()["refused"] if ns in r] == []

            # The VM's endpoint stops being ready: it takes no new connection.
            slice_api = ("discovery.k8s.io/v1", "EndpointSlice", "ext-1")
            leaving = [db, slice_endpoint(outside, ready=False)]
            await kube_admin.patch(*slice_api, {"endpoints": leaving}, ns)
            view = await wait_snapshot(received, ns, lambda v: len(endpoint_ips(v, "ext")) == 1)
            assert endpoint_ips(view, "ext") == [pod_ips["db"]]

            # The pod leaves the slice, the VM is back.
            await kube_admin.patch(*slice_api, {"endpoints": [slice_endpoint(outside)]}, ns)
            view = await wait_snapshot(received, ns, lambda v: endpoint_ips(v, "ext") == [outside])
            assert list(backends(received[-1], ns, "ext", vips["ext"])) == [f"{ns}/ext/{outside}"]

            # The node moves to another zone: its workloads follow.
            await kube_admin.patch("v1", "Node", node, {"metadata": {"labels": {
                "topology.kubernetes.io/zone": "eu-west-1b"}}})  # fmt: skip
            view = await wait_snapshot(received, ns, lambda v: all(
                w["locality"]["zone"] == "eu-west-1b" for w in v["workloads"]))  # fmt: skip

            # The slice is deleted: the Service is still there, with no endpoint.
            await kube_admin.delete(*slice_api, ns)
            view = await wait_snapshot(received, ns, lambda v: endpoint_ips(v, "ext") == [])
            assert endpoint_ips(view, "db") == [pod_ips["db"]]
