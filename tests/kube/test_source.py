"""The Kubernetes source (``k8s.sources.kubernetes``, in this process, with the admin
kubeconfig) against the real API server: the store's gate opens once every kind is
listed; a Namespace labelled after its pods exist enrolls them; a pod's IP change and
its deletion reach the translated snapshot; a watch the server ends (``timeoutSeconds``)
resumes without a re-list; a resourceVersion compacted away (410 Gone) is recovered
from by a re-list whose diff deletes what was deleted meanwhile; a CRD installed later
starts its resource, and removing it deletes its objects; the controller manager's
EndpointSlices and a Node's zone reach the store.

The source watches the whole cluster, so each test looks at its own namespace only."""

from __future__ import annotations

import gc
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio
import trio_asyncio

from k8s import manifests as m
from k8s.sources.api import Api, Watch
from k8s.sources.driver import KubernetesSource
from k8s.sources.kubernetes import ClientApi, KubeSourceConfig, configure
from k8s.sources.watch import ListRequest, Raw
from k8s.store import ObjectStore
from k8s.translate import translate
from mesh.backoff import Backoff
from mesh.model import Locality, MeshSnapshot, Workload
from tests.kube import crds, etcd
from tests.kube.client import KubeAdmin, NotFound
from tests.kube.cluster import Cluster
from tests.kube.kubelet import create_node, pod, remove_pod, service, set_pod_running
from tests.waiting import wait_until

pytestmark = pytest.mark.kube

SECONDS = 20.0  # a change's way from the API server to the store: well under a second
PODS = "/api/v1/pods"
AMBIT_POLICIES = "authorizationpolicies.security.ambit.io"


class HeldApi:
    """The real requests, except that while :meth:`hold` is in force the LISTs and
    WATCHes of one collection (``path``) wait, until :meth:`release`."""

    def __init__(self, api: Api, path: str) -> None:
        self.api = api
        self.path = path
        self.waiting = 0  # requests of ``path`` held now
        self.watched_from: list[str] = []  # the resourceVersion of each watch of ``path``
        self._release: trio.Event | None = None

    def hold(self) -> None:
        self._release = trio.Event()

    def release(self) -> None:
        if self._release is not None:
            self._release.set()
            self._release = None

    async def _gate(self, path: str) -> None:
        while path == self.path and self._release is not None:
            release = self._release
            self.waiting += 1
            try:
                await release.wait()
            finally:
                self.waiting -= 1

    async def list_page(self, path: str, request: ListRequest) -> tuple[list[Raw], str, str]:
        await self._gate(path)
        return await self.api.list_page(path, request)

    async def open_watch(self, path: str, resource_version: str, seconds: int) -> Watch:
        await self._gate(path)
        if path == self.path:
            self.watched_from.append(resource_version)
        return await self.api.open_watch(path, resource_version, seconds)


async def _serve_through(
    source: KubernetesSource,
    store: ObjectStore,
    wrap: Callable[[Api], Api],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``KubernetesSource.run`` with its requests passed through ``wrap``."""
    async with trio_asyncio.open_loop():
        api = ClientApi(await trio_asyncio.aio_as_trio(configure)(source.config))
        try:
            await source.serve(wrap(api), store, task_status=task_status)
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                await trio_asyncio.aio_as_trio(api.close)()


@asynccontextmanager
async def watching(
    cluster: Cluster, *, watch_timeout: int = 300, wrap: Callable[[Api], Api] | None = None
) -> AsyncIterator[tuple[KubernetesSource, ObjectStore]]:
    """A source feeding a fresh store from the cluster, stopped on exit."""
    store = ObjectStore()
    config = KubeSourceConfig(
        kubeconfig=cluster.kubeconfig, watch_timeout=watch_timeout,
        backoff=Backoff(initial=0.05, maximum=0.5),
    )  # fmt: skip
    source = KubernetesSource(config)
    async with trio.open_nursery() as nursery:
        if wrap is None:
            await nursery.start(partial(source.run, store))
        else:
            await nursery.start(partial(_serve_through, source, store, wrap))
        yield source, store
        nursery.cancel_scope.cancel()
    gc.collect()  # a connection left open is collected now: a ResourceWarning, an error


async def settle(store: ObjectStore, holds: Callable[[], object], seconds: float = SECONDS) -> None:
    """Wait until ``holds()`` after one of the store's changes (or at once)."""
    with trio.fail_after(seconds):
        while not holds():
            await store.wait_changed(store.version)


def snapshot(store: ObjectStore) -> MeshSnapshot:
    return translate(store.objects(), version=1).snapshot


def workloads(store: ObjectStore, ns: str) -> dict[str, Workload]:
    return {w.name: w for w in snapshot(store).workloads if w.namespace == ns}


def locality(store: ObjectStore, ns: str, name: str) -> Locality | str | None:
    """The workload's locality; "absent" before it is a workload."""
    found = workloads(store, ns).get(name)
    return found.locality if found is not None else "absent"


@pytest.fixture
def net() -> str:
    """A random /24 for the test's pod IPs (``net + "1"``): a pod of an earlier test,
    still terminating, may hold its addresses a while, and an address's first holder
    keeps it."""
    return f"10.{secrets.randbelow(200) + 32}.{secrets.randbelow(256)}."


def names(store: ObjectStore, kind: str, ns: str) -> list[str]:
    return [e.obj.name for e in store.entries(kind, ns)]


@pytest.fixture
async def node(kube_admin: KubeAdmin, kube_ns: str) -> AsyncIterator[str]:
    """A Node for this test's pods (the pod garbage collector deletes pods bound to a
    node that does not exist)."""
    name = f"node-{kube_ns}"
    with trio.fail_after(10):
        await create_node(kube_admin, name)
    yield name
    with trio.fail_after(10), suppress(NotFound):
        await kube_admin.delete("v1", "Node", name)


async def running_pod(
    admin: KubeAdmin, ns: str, name: str, node: str, ip: str, labels: dict[str, str]
) -> None:
    await admin.create(pod(ns, name, labels=labels, node=node))
    await set_pod_running(admin, ns, name, ip)


async def test_the_gate_opens_only_once_every_kind_is_listed(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str
) -> None:
    held: list[HeldApi] = []

    def hold_services(api: Api) -> Api:
        held.append(HeldApi(api, "/api/v1/services"))
        held[0].hold()
        return held[0]

    with trio.fail_after(60):
        await running_pod(kube_admin, kube_ns, "web", node, net + "1", {"app": "web"})
        await kube_admin.create(service(kube_ns, "web", {"app": "web"}))
        async with watching(kube_cluster, wrap=hold_services) as (source, store):
            await settle(store, lambda: store.unlisted() == ["Service"])
            await wait_until(lambda: held[0].waiting == 1, seconds=SECONDS)
            assert not store.complete
            assert names(store, "Pod", kube_ns) == ["web"]  # listed, but not published

            held[0].release()
            await settle(store, lambda: store.complete)
            assert names(store, "Service", kube_ns) == ["web"]
            stats = source.statistics()
            assert all(s.listed for s in stats.values()), stats
            assert {s.lists for s in stats.values() if s.phase != "absent"} == {1}
            (svc,) = [s for s in snapshot(store).services if s.namespace == kube_ns]
            assert [e.ip for e in svc.endpoints] == [net + "1"]


async def test_a_stopped_source_leaves_no_connection_open(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    """Every watch's connection is closed by the time the source has stopped (else its
    asyncio transport is collected unclosed, a ResourceWarning, which fails the test)."""
    with trio.fail_after(30):
        async with watching(kube_cluster) as (source, store):
            await settle(store, lambda: store.complete)
            await wait_until(lambda: source.statistics()["pods"].watches == 1, seconds=SECONDS)
    gc.collect()


@pytest.mark.parametrize("label", ["ambit.io/dataplane-mode", "istio.io/dataplane-mode"])
async def test_a_namespace_labelled_after_its_pods_exist_enrolls_them(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str, label: str
) -> None:
    with trio.fail_after(60):
        await running_pod(kube_admin, kube_ns, "web", node, net + "1", {"app": "web"})
        opted_out = {"app": "legacy", label: "none"}
        await running_pod(kube_admin, kube_ns, "legacy", node, net + "2", opted_out)
        async with watching(kube_cluster) as (_source, store):
            await settle(store, lambda: len(workloads(store, kube_ns)) == 2)
            assert {n: w.protocol for n, w in workloads(store, kube_ns).items()} == {
                "web": "TCP", "legacy": "TCP"
            }  # fmt: skip

            labels = {"metadata": {"labels": {label: "ambient"}}}
            await kube_admin.patch("v1", "Namespace", kube_ns, labels)
            await settle(store, lambda: workloads(store, kube_ns)["web"].protocol == "HBONE")
            assert workloads(store, kube_ns)["legacy"].protocol == "TCP"
            assert workloads(store, kube_ns)["web"].node == node

            await kube_admin.patch("v1", "Namespace", kube_ns, {"metadata": {"labels": {
                label: None}}})  # fmt: skip
            await settle(store, lambda: workloads(store, kube_ns)["web"].protocol == "TCP")


async def test_a_pods_new_ip_and_its_deletion_reach_the_snapshot(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str
) -> None:
    def endpoints() -> list[str] | None:
        """The Service's endpoints; None until it is in the snapshot."""
        found = [s for s in snapshot(store).services if s.namespace == kube_ns]
        return sorted(e.ip for e in found[0].endpoints) if found else None

    with trio.fail_after(60):
        await kube_admin.patch("v1", "Namespace", kube_ns, {"metadata": {"labels": {
            "ambit.io/dataplane-mode": "ambient"}}})  # fmt: skip
        await kube_admin.create(service(kube_ns, "web", {"app": "web"}))
        await running_pod(kube_admin, kube_ns, "web-1", node, net + "1", {"app": "web"})
        await running_pod(kube_admin, kube_ns, "web-2", node, net + "2", {"app": "web"})
        async with watching(kube_cluster) as (_source, store):
            await settle(store, lambda: endpoints() == [net + "1", net + "2"])

            await set_pod_running(kube_admin, kube_ns, "web-1", net + "11")
            await settle(store, lambda: workloads(store, kube_ns)["web-1"].ip == net + "11")
            assert endpoints() == [net + "11", net + "2"]

            await set_pod_running(kube_admin, kube_ns, "web-2", net + "2", ready=False)
            await settle(store, lambda: endpoints() == [net + "11"])

            await kube_admin.delete("v1", "Pod", "web-1", kube_ns)  # Terminating first
            await remove_pod(kube_admin, kube_ns, "web-1")  # then gone, as a kubelet does
            await settle(store, lambda: "web-1" not in workloads(store, kube_ns))
            assert endpoints() == []
            assert names(store, "Pod", kube_ns) == ["web-2"]


async def test_the_controller_managers_slices_and_a_nodes_zone_reach_the_store(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str
) -> None:
    def slice_endpoints() -> list[tuple[str, tuple[str, str] | None, str, bool]]:
        return [
            (e.address, e.pod, e.node_name, e.ready)
            for entry in store.entries("EndpointSlice", kube_ns)
            if isinstance(entry.obj, m.EndpointSlice) and entry.obj.service_name == "web"
            for e in entry.obj.endpoints
        ]

    zone = {"topology.kubernetes.io/zone": f"zone-{kube_ns}"}
    with trio.fail_after(60):
        await kube_admin.patch("v1", "Node", node, {"metadata": {"labels": zone}})
        await kube_admin.create(service(kube_ns, "web", {"app": "web"}))
        await running_pod(kube_admin, kube_ns, "web-1", node, net + "1", {"app": "web"})
        async with watching(kube_cluster) as (_source, store):
            web_1 = (net + "1", (kube_ns, "web-1"), node)
            await settle(store, lambda: slice_endpoints() == [(*web_1, True)])
            zoned = Locality(zone=zone["topology.kubernetes.io/zone"])
            # The pods' watch is not the slices': the pod may come a moment later.
            await settle(store, lambda: locality(store, kube_ns, "web-1") == zoned)

            await set_pod_running(kube_admin, kube_ns, "web-1", net + "1", ready=False)
            await settle(store, lambda: slice_endpoints() == [(*web_1, False)])
            await kube_admin.patch("v1", "Node", node, {"metadata": {"labels": {
                "topology.kubernetes.io/zone": None}}})  # fmt: skip
            await settle(store, lambda: locality(store, kube_ns, "web-1") is None)


async def test_a_watch_the_server_ends_resumes_without_a_relist(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str
) -> None:
    """``timeoutSeconds`` of 1: the server ends every watch after a second, and each is
    opened again from the last resourceVersion seen."""
    held: list[HeldApi] = []

    def record(api: Api) -> Api:
        held.append(HeldApi(api, PODS))
        return held[0]

    with trio.fail_after(60):
        async with watching(kube_cluster, watch_timeout=1, wrap=record) as (source, store):
            await settle(store, lambda: store.complete)
            await running_pod(kube_admin, kube_ns, "early", node, net + "1", {"app": "a"})
            await settle(store, lambda: "early" in workloads(store, kube_ns))
            await wait_until(lambda: source.statistics()["pods"].watch_ends >= 3, seconds=SECONDS)

            await running_pod(kube_admin, kube_ns, "late", node, net + "2", {"app": "a"})
            await settle(store, lambda: "late" in workloads(store, kube_ns))
            pods = source.statistics()["pods"]
            assert (pods.lists, pods.expired, pods.failures) == (1, 0, 0)
            assert pods.watches >= 4
            versions = [int(rv) for rv in held[0].watched_from]
            assert versions == sorted(versions)  # never back to an older resourceVersion
            assert len(set(versions)) > 1  # the pods' events moved it forward


async def test_an_expired_resource_version_relists_without_losing_a_delete(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str
) -> None:
    """The pods' watch is held back while a pod is deleted and etcd compacts its history:
    the watch from the old resourceVersion gets 410 Gone (pods are not in the API
    server's watch cache here, conftest.APISERVER_FLAGS), and the re-list's diff deletes
    the pod whose DELETED event was never seen."""
    held: list[HeldApi] = []

    def hold_pods(api: Api) -> Api:
        held.append(HeldApi(api, PODS))
        return held[0]

    with trio.fail_after(60):
        await running_pod(kube_admin, kube_ns, "stays", node, net + "1", {"app": "a"})
        await running_pod(kube_admin, kube_ns, "goes", node, net + "2", {"app": "a"})
        async with watching(kube_cluster, watch_timeout=1, wrap=hold_pods) as (source, store):
            await settle(store, lambda: len(workloads(store, kube_ns)) == 2)
            held[0].hold()  # the watch open now ends within two seconds; no new one opens
            await wait_until(lambda: held[0].waiting == 1, seconds=SECONDS)

            await remove_pod(kube_admin, kube_ns, "goes")
            await running_pod(kube_admin, kube_ns, "new", node, net + "3", {"app": "a"})
            await etcd.compact(kube_cluster, await etcd.revision(kube_cluster))
            assert sorted(workloads(store, kube_ns)) == ["goes", "stays"]  # nothing seen yet

            held[0].release()
            await settle(store, lambda: sorted(workloads(store, kube_ns)) == ["new", "stays"])
            pods = source.statistics()["pods"]
            assert (pods.expired, pods.lists) == (1, 2)
            assert int(held[0].watched_from[-1]) > int(held[0].watched_from[-2])


async def test_a_crd_installed_later_starts_its_resource_and_removing_it_deletes_its_objects(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    """ambit's own policy group: no test but this installs it, so the cluster starts
    without it, and is left without it."""
    name = f"deny-{secrets.token_hex(2)}"
    policy = {
        "apiVersion": "security.ambit.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": kube_ns},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]},
    }
    crd = crds.policy_crd("security.ambit.io", "AuthorizationPolicy", "authorizationpolicies")
    try:
        with trio.fail_after(90):
            async with watching(kube_cluster) as (source, store):
                await settle(store, lambda: store.complete)
                assert source.statistics()[AMBIT_POLICIES].phase == "absent"
                assert "AuthorizationPolicy" not in store.unlisted()

                await crds.install(kube_admin, [crd])
                await kube_admin.create(policy)
                await settle(store, lambda: names(store, "AuthorizationPolicy", kube_ns) != [])
                assert names(store, "AuthorizationPolicy", kube_ns) == [name]
                (model,) = [a for a in snapshot(store).authorizations if a.namespace == kube_ns]
                assert model.action == "DENY"
                assert store.complete

                await crds.remove(kube_admin, AMBIT_POLICIES)

                def absent() -> bool:
                    return source.statistics()[AMBIT_POLICIES].phase == "absent"

                await wait_until(absent, seconds=SECONDS)
                assert names(store, "AuthorizationPolicy", kube_ns) == []
                assert store.complete
    finally:
        with trio.fail_after(70):
            await crds.remove(kube_admin, AMBIT_POLICIES)
