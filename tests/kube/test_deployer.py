"""The waypoint deployer (``k8s.kube_deployer``) against the real API server and
kube-controller-manager, fed by the Kubernetes source as in the control plane: a Gateway
of class ``ambit-waypoint`` gets its ServiceAccount, Service and Deployment, owned by it,
and the controllers make a ReplicaSet and a Pod of it (no kubelet runs the pod); a changed
infrastructure label and a Gateway re-created under the same name update them; deleting
the Gateway lets the garbage collector remove them; a Gateway that leaves the class has
them deleted by the deployer; a Gateway of another class, or one whose name cannot name
a Service, gets nothing; the GatewayClass exists with ambit's controller.

The deployer sees every Gateway of the cluster, so each test looks at its own namespace."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from k8s import manifests
from k8s.events import EventRecorder
from k8s.kube_deployer import DeployerTiming, KubeDeployer, run_deployer
from k8s.sources.driver import KubernetesSource
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from k8s.store import ObjectStore
from k8s.waypoint_kube import KubeDeployerSettings, kube_documents
from mesh.backoff import Backoff
from mesh.constants import CONTROL_PLANE_SERVICE_ACCOUNT, SYSTEM_NAMESPACE
from tests.kube.client import KubeAdmin, NotFound, Obj, gone, wait_for
from tests.kube.cluster import Cluster, write_kubeconfig
from tests.kube.installing import installed

pytestmark = pytest.mark.kube
__all__ = ["installed"]  # the fixture, used here

SECONDS = 30.0  # a Gateway's way to its objects: about a second
GC_SECONDS = 60.0  # the garbage collector's, after its Gateway is deleted
GATEWAY_API = "gateway.networking.k8s.io/v1"
CLASS_PATH = "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ambit-waypoint"
MADE = (("v1", "ServiceAccount"), ("v1", "Service"), ("apps/v1", "Deployment"))
SETTINGS = KubeDeployerSettings(image="registry.example/ambit:test")


def gateway(ns: str, name: str, klass: str = "ambit-waypoint", team: str = "blue") -> Obj:
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "gatewayClassName": klass,
            "infrastructure": {"labels": {"team": team},
                               "annotations": {"example.com/owner": "ops"}},
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }  # fmt: skip


@asynccontextmanager
async def deploying(
    cluster: Cluster, backoff: Backoff | None = None, kubeconfig: Path | None = None
) -> AsyncIterator[KubeDeployer]:
    """The source feeding a store and the deployer following it, on one API client, as
    the control plane runs them (a failed request is retried after ``backoff``'s delays,
    by default at most half a second apart; as the admin unless ``kubeconfig``); stopped
    on exit."""
    store = ObjectStore()
    config = KubeSourceConfig(
        kubeconfig=kubeconfig or cluster.kubeconfig, backoff=Backoff(initial=0.05, maximum=0.5)
    )
    timing = DeployerTiming(backoff=backoff or Backoff(initial=0.05, maximum=0.5))
    async with open_kube_api(config) as api, trio.open_nursery() as nursery:
        await nursery.start(partial(KubernetesSource(config).serve, api, store))
        events = EventRecorder(api, instance="test-deployer", action="Deploy")
        deployer = await nursery.start(
            partial(run_deployer, api, store, SETTINGS, timing=timing, events=events)
        )
        yield deployer
        nursery.cancel_scope.cancel()
    gc.collect()  # a connection left open is collected now: a ResourceWarning, an error


async def made(admin: KubeAdmin, ns: str, name: str) -> dict[str, Obj] | None:
    """The ServiceAccount, Service and Deployment named ``name``, once all three exist."""
    found = {}
    for api_version, kind in MADE:
        try:
            found[kind] = await admin.get(api_version, kind, name, ns)
        except NotFound:
            return None
    return found


async def all_gone(admin: KubeAdmin, ns: str, name: str) -> bool:
    return all([await gone(admin, v, k, name, ns) for v, k in MADE])


def mine(counts: Counter[str], ns: str) -> dict[str, int]:
    """The deployer's counts of the paths in namespace ``ns``."""
    return {p: n for p, n in counts.items() if f"/namespaces/{ns}/" in p}


def owners(obj: Obj) -> list[tuple[str, str, bool, bool]]:
    return [(o["kind"], o["uid"], o.get("controller", False), o.get("blockOwnerDeletion", False))
            for o in obj["metadata"].get("ownerReferences", [])]  # fmt: skip


async def pods_of(admin: KubeAdmin, ns: str, name: str) -> list[Obj] | None:
    selector = f"gateway.networking.k8s.io/gateway-name={name}"
    pods = await admin.list("v1", "Pod", ns, label_selector=selector)
    return pods or None


async def test_a_waypoint_gateway_gets_its_objects_and_the_controllers_a_pod(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    with trio.fail_after(90):
        async with deploying(kube_cluster):
            created = await kube_admin.create(gateway(kube_ns, "edge"))
            uid = created["metadata"]["uid"]
            objects = await wait_for(partial(made, kube_admin, kube_ns, "edge"), seconds=SECONDS)
            for obj in objects.values():
                assert owners(obj) == [("Gateway", uid, True, True)]
                assert obj["metadata"]["labels"]["ambit.io/managed-by"] == "waypoint-deployer"
                assert obj["metadata"]["labels"]["team"] == "blue"
                assert obj["metadata"]["annotations"]["example.com/owner"] == "ops"
                managers = {f["manager"] for f in obj["metadata"]["managedFields"]}
                assert "ambit" in managers
            ports = objects["Service"]["spec"]["ports"]
            assert [(p["name"], p["port"], p.get("appProtocol")) for p in ports] == [
                ("mesh", 15008, "all"), ("status-port", 15021, "tcp")]  # fmt: skip

            template = objects["Deployment"]["spec"]["template"]
            assert template["metadata"]["labels"]["ambit.io/dataplane-mode"] == "none"
            assert template["metadata"]["annotations"]["prometheus.io/port"] == "15020"
            (container,) = template["spec"]["containers"]
            assert container["image"] == "registry.example/ambit:test"
            assert container["command"][:5] == ["ambit", "--log-format", "json", "waypoint", "run"]
            assert container["readinessProbe"]["httpGet"]["port"] == 15021
            assert objects["Deployment"]["spec"]["replicas"] == 1  # the API server's default

            # The controllers take it: a ReplicaSet, and its Pod admitted with the
            # waypoint's ServiceAccount and the projected token for the CA.
            (pod, *_) = await wait_for(partial(pods_of, kube_admin, kube_ns, "edge"),
                                       seconds=SECONDS)  # fmt: skip
            assert pod["spec"]["serviceAccountName"] == "edge"
            (rs_owner,) = pod["metadata"]["ownerReferences"]
            assert rs_owner["kind"] == "ReplicaSet"
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            source = volumes["ambit-token"]["projected"]["sources"][0]["serviceAccountToken"]
            assert source["audience"] == "ambit-ca"

            klass = await kube_admin.get(GATEWAY_API, "GatewayClass", "ambit-waypoint")
            assert klass["spec"]["controllerName"] == "ambit.io/mesh-controller"

            # What the deployer applies is what a strict server-side validation accepts.
            typed = manifests.parse_object(created, "the Gateway created")
            assert isinstance(typed, manifests.Gateway)
            (doc,) = [d for d in kube_documents(typed, SETTINGS) if d["kind"] == "Deployment"]
            await kube_admin.apply(doc, dry_run=True)


async def test_a_changed_label_and_a_recreated_gateway_update_the_objects(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    async def team_is(team: str, uid: str) -> bool:
        objects = await made(kube_admin, kube_ns, "edge")
        return (
            objects is not None
            and all(
                o["metadata"]["labels"]["team"] == team and owners(o)[0][1] == uid
                for o in objects.values()
            )
            and objects["Deployment"]["spec"]["template"]["metadata"]["labels"]["team"] == team
        )

    with trio.fail_after(120):
        async with deploying(kube_cluster) as deployer:
            first = (await kube_admin.create(gateway(kube_ns, "edge")))["metadata"]["uid"]
            await wait_for(partial(team_is, "blue", first), seconds=SECONDS)
            before = mine(deployer.applied, kube_ns)
            klass = deployer.applied[CLASS_PATH]
            assert (klass, sorted(before.values())) == (1, [1, 1, 1])

            patch = {"spec": {"infrastructure": {"labels": {"team": "red"}}}}
            await kube_admin.patch(GATEWAY_API, "Gateway", "edge", patch, kube_ns)
            await wait_for(partial(team_is, "red", first), seconds=SECONDS)
            after = mine(deployer.applied, kube_ns)
            assert after == dict.fromkeys(before, 2), "each object once more"
            assert deployer.applied[CLASS_PATH] == klass, "the class untouched"

            await kube_admin.delete(GATEWAY_API, "Gateway", "edge", kube_ns)
            again = await kube_admin.create(gateway(kube_ns, "edge", team="green"))
            second = again["metadata"]["uid"]
            assert second != first
            await wait_for(partial(team_is, "green", second), seconds=SECONDS)
            # The garbage collector, which saw the first Gateway go, leaves them be.
            await trio.sleep(2)
            assert await team_is("green", second)


async def test_deleting_the_gateway_lets_the_garbage_collector_remove_its_objects(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    with trio.fail_after(GC_SECONDS + 60):
        async with deploying(kube_cluster) as deployer:
            await kube_admin.create(gateway(kube_ns, "edge"))
            await wait_for(partial(made, kube_admin, kube_ns, "edge"), seconds=SECONDS)
            await wait_for(partial(pods_of, kube_admin, kube_ns, "edge"), seconds=SECONDS)

            await kube_admin.delete(GATEWAY_API, "Gateway", "edge", kube_ns)
            await wait_for(partial(all_gone, kube_admin, kube_ns, "edge"), seconds=GC_SECONDS)
            assert mine(deployer.deleted, kube_ns) == {}, "the collector's work, not the deployer's"

            async def nothing_left() -> bool:
                replica_sets = await kube_admin.list("apps/v1", "ReplicaSet", kube_ns)
                return not replica_sets and await pods_of(kube_admin, kube_ns, "edge") is None

            await wait_for(nothing_left, seconds=GC_SECONDS)  # theirs went the same way


async def test_a_gateway_leaving_the_class_loses_its_objects_and_others_get_none(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    long_name = "x" * 64
    with trio.fail_after(120), capture_logs() as logs:
        async with deploying(kube_cluster) as deployer:
            # An object named after the other class's Gateway, not the deployer's, stays.
            unrelated = {"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "ingress", "namespace": kube_ns}}  # fmt: skip
            await kube_admin.create(unrelated)
            await kube_admin.create(gateway(kube_ns, "ingress", klass="nginx"))
            await kube_admin.create(gateway(kube_ns, long_name))  # no Service can be named so
            await kube_admin.create(gateway(kube_ns, "edge"))
            await wait_for(partial(made, kube_admin, kube_ns, "edge"), seconds=SECONDS)
            # The deployer has seen the two Gateways created before "edge", and made nothing.
            for api_version, kind in MADE[1:]:
                assert await gone(kube_admin, api_version, kind, "ingress", kube_ns)
            assert await all_gone(kube_admin, kube_ns, long_name)
            refused = [e for e in logs if e["event"] == "waypoint_refused"
                       and e["object"] == f"Gateway {kube_ns}/{long_name}"]  # fmt: skip
            assert len(refused) == 1, "logged once, however many times the store changed"
            assert "rename the Gateway" in refused[0]["reason"]
            # And told where an operator looks: one Warning Event on that Gateway.
            found = await kube_admin.list("events.k8s.io/v1", "Event", kube_ns)
            told = [(e["reason"], e["type"]) for e in found
                    if e["regarding"]["name"] == long_name]  # fmt: skip
            assert told == [("WaypointNotDeployed", "Warning")]

            patch = {"spec": {"gatewayClassName": "nginx"}}
            await kube_admin.patch(GATEWAY_API, "Gateway", "edge", patch, kube_ns)
            await wait_for(partial(all_gone, kube_admin, kube_ns, "edge"), seconds=SECONDS)
            assert sorted(mine(deployer.deleted, kube_ns)) == [
                f"/api/v1/namespaces/{kube_ns}/serviceaccounts/edge",
                f"/api/v1/namespaces/{kube_ns}/services/edge",
                f"/apis/apps/v1/namespaces/{kube_ns}/deployments/edge",
            ]
            await kube_admin.get("v1", "ServiceAccount", "ingress", kube_ns)


def other_deployment(ns: str, name: str) -> Obj:
    """Someone else's Deployment, whose selector (immutable) is not the waypoint's."""
    labels = {"app": "other"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "example"}]}}},
    }  # fmt: skip


async def test_a_refused_apply_is_retried_logged_once_and_recovers(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    """A Deployment of the Gateway's name already exists with another selector (which
    cannot change): the apply is refused until that Deployment is deleted."""
    theirs = other_deployment(kube_ns, "edge")
    path = f"/apis/apps/v1/namespaces/{kube_ns}/deployments/edge"

    def events(name: str) -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == name and e.get("object") == path]

    with trio.fail_after(120), capture_logs() as logs:
        await kube_admin.create(theirs)
        async with deploying(kube_cluster):
            uid = (await kube_admin.create(gateway(kube_ns, "edge")))["metadata"]["uid"]

            async def refused() -> bool:
                return bool(events("waypoint_apply_failed"))

            await wait_for(refused, seconds=SECONDS)
            await trio.sleep(2)  # retried meanwhile, every half a second at most
            failures = events("waypoint_apply_failed")
            assert len(failures) == 1, failures
            (failed,) = failures
            assert "HTTP 422" in failed["reason"]
            assert "selector" in failed["reason"]
            account = await kube_admin.get("v1", "ServiceAccount", "edge", kube_ns)
            assert owners(account)[0][1] == uid, "the other objects are applied"

            await kube_admin.delete("apps/v1", "Deployment", "edge", kube_ns)

            async def ours() -> bool:
                objects = await made(kube_admin, kube_ns, "edge")
                return objects is not None and owners(objects["Deployment"]) != []

            await wait_for(ours, seconds=SECONDS)
            assert len(events("waypoint_apply_recovered")) == 1, logs
            # The 422 logged once; an apply racing the delete may have failed otherwise
            # (409, the object changed under it), which is another error, logged too.
            refusals = [e for e in events("waypoint_apply_failed") if "HTTP 422" in e["reason"]]
            assert refusals == [failed], events("waypoint_apply_failed")


async def test_a_path_waiting_for_its_retry_holds_up_no_other_and_a_change_retries_it(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    """With retries 50 to 100 s apart, another Gateway is deployed meanwhile, and a
    change of the refused Gateway is tried at once."""
    quick = 10.0  # well under the retry's delay
    with trio.fail_after(90):
        await kube_admin.create(other_deployment(kube_ns, "edge"))
        async with deploying(kube_cluster, Backoff(initial=100.0, maximum=100.0)) as deployer:
            await kube_admin.create(gateway(kube_ns, "edge"))
            await wait_for(partial(made, kube_admin, kube_ns, "edge"), seconds=SECONDS)
            path = f"/apis/apps/v1/namespaces/{kube_ns}/deployments/edge"
            assert path not in deployer.applied

            await kube_admin.create(gateway(kube_ns, "second"))
            await wait_for(partial(made, kube_admin, kube_ns, "second"), seconds=quick)
            assert path not in deployer.applied, "not retried meanwhile"

            await kube_admin.delete("apps/v1", "Deployment", "edge", kube_ns)
            await trio.sleep(1)  # the deployer does not retry on its own yet
            assert await gone(kube_admin, "apps/v1", "Deployment", "edge", kube_ns)
            patch = {"spec": {"infrastructure": {"labels": {"team": "red"}}}}
            await kube_admin.patch(GATEWAY_API, "Gateway", "edge", patch, kube_ns)

            async def ours() -> bool:
                objects = await made(kube_admin, kube_ns, "edge")
                return objects is not None and owners(objects["Deployment"]) != []

            await wait_for(ours, seconds=quick)


async def test_the_control_planes_service_account_may_do_all_the_deployer_does(
    kube_cluster: Cluster,
    kube_admin: KubeAdmin,
    kube_ns: str,
    gateway_crds: list[str],
    installed: list[Obj],
    tmp_path: Path,
) -> None:
    """With a token of ``ambit-controlplane`` and the RBAC ``ambit install`` gives it:
    the class and a waypoint applied, then deleted when the Gateway leaves the class,
    and not one request refused. (Last in this module: ``installed`` is the module's.)"""
    with trio.fail_after(20):
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 600}}  # fmt: skip
        answer = await kube_admin.post_subresource(
            "v1", "ServiceAccount", CONTROL_PLANE_SERVICE_ACCOUNT, "token", request,
            SYSTEM_NAMESPACE,
        )  # fmt: skip
    kubeconfig = tmp_path / "kubeconfig"
    token = answer["status"]["token"]
    write_kubeconfig(kubeconfig, kube_cluster.server, kube_cluster.ca_file, token)
    failures = ("waypoint_apply_failed", "waypoint_delete_failed")
    with trio.fail_after(90), capture_logs() as logs:
        async with deploying(kube_cluster, kubeconfig=kubeconfig) as deployer:
            await kube_admin.create(gateway(kube_ns, "edge"))
            await wait_for(partial(made, kube_admin, kube_ns, "edge"), seconds=SECONDS)
            assert deployer.applied[CLASS_PATH] == 1
            patch = {"spec": {"gatewayClassName": "nginx"}}
            await kube_admin.patch(GATEWAY_API, "Gateway", "edge", patch, kube_ns)
            await wait_for(partial(all_gone, kube_admin, kube_ns, "edge"), seconds=SECONDS)
    refused = [e for e in logs if e["event"] in failures
               and (kube_ns in e["object"] or e["object"] == CLASS_PATH)]  # fmt: skip
    assert refused == []
