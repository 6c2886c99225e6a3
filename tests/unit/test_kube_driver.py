"""The source's Trio loop around the watch machines, with its requests answered in
memory (:class:`FakeApi`, the seam :class:`k8s.sources.kubernetes.Api`; no sockets): pages
are followed, the gate opens once every resource is listed, CRDs start and stop their
resources, a 410 re-lists and diffs, and a watch the server ends resumes without a
re-list. The real API server's turn is in tests/kube/."""

from __future__ import annotations

import math
from typing import Any

import trio

from k8s.sources.api import Gone
from k8s.sources.driver import KubernetesSource
from k8s.sources.kubernetes import KubeSourceConfig
from k8s.sources.watch import ListRequest, Raw
from k8s.store import ObjectStore
from mesh.backoff import Backoff
from tests.waiting import wait_until

PODS = "/api/v1/pods"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
ROUTES = "/apis/gateway.networking.k8s.io/v1/httproutes"


class FakeWatch:
    def __init__(self) -> None:
        self.send, self._receive = trio.open_memory_channel[tuple[str, Raw] | None](math.inf)

    async def next_event(self) -> tuple[str, Raw] | None:
        return await self._receive.receive()

    def close(self) -> None:
        pass


class FakeApi:
    """Collections by path; each LIST and WATCH is recorded."""

    def __init__(self) -> None:
        self.objects: dict[str, list[Raw]] = {}
        self.rv = 100
        self.lists: list[tuple[str, str | None]] = []
        self.watches: dict[str, list[tuple[str, FakeWatch]]] = {}
        self.gone_once: set[str] = set()

    async def list_page(self, path: str, request: ListRequest) -> tuple[list[Raw], str, str]:
        await trio.lowlevel.checkpoint()
        self.lists.append((path, request.continue_token))
        items = self.objects.get(path, [])
        start = int(request.continue_token or 0)
        end = start + request.limit
        return items[start:end], str(self.rv), str(end) if end < len(items) else ""

    async def open_watch(self, path: str, resource_version: str, seconds: int) -> FakeWatch:
        await trio.lowlevel.checkpoint()
        if path in self.gone_once:
            self.gone_once.discard(path)
            raise Gone()
        watch = FakeWatch()
        self.watches.setdefault(path, []).append((resource_version, watch))
        return watch

    def event(self, path: str, type_: str, obj: Raw) -> None:
        self.watches[path][-1][1].send.send_nowait((type_, obj))


def pod(name: str, rv: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": name, "resourceVersion": str(rv)},
        "spec": {"containers": [{"name": "app", "image": "dropped"}]},
        "status": {"podIP": "10.0.0.1"},
    }


def crd(plural: str, group: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{plural}.{group}", "resourceVersion": "5"},
        "spec": {"group": group, "names": {"plural": plural},
                 "versions": [{"name": "v1", "served": True}]},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }  # fmt: skip


def route(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": name, "resourceVersion": "7"},
        "spec": {"parentRefs": [{"name": "web", "kind": "Service", "group": ""}]},
    }


def names(store: ObjectStore, kind: str) -> list[str]:
    return [e.obj.name for e in store.entries(kind)]


async def start(api: FakeApi, store: ObjectStore, nursery: trio.Nursery) -> KubernetesSource:
    config = KubeSourceConfig(page_limit=2, backoff=Backoff(0.001, 0.01, jitter=False))
    source = KubernetesSource(config)
    await nursery.start(source.serve, api, store)
    return source


async def test_pages_are_followed_and_the_gate_opens_once_everything_is_listed() -> None:
    api = FakeApi()
    api.objects[PODS] = [pod("a", 1), pod("b", 2), pod("c", 3)]
    store = ObjectStore()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(api, store, nursery)
            await wait_until(lambda: store.complete)
            assert names(store, "Pod") == ["a", "b", "c"]
            assert [c for p, c in api.lists if p == PODS] == [None, "2"]
            await wait_until(lambda: PODS in api.watches)
            assert api.watches[PODS][0][0] == "100"  # from the list's resourceVersion
            nursery.cancel_scope.cancel()


async def test_a_crd_that_appears_starts_its_resource_and_one_that_goes_deletes_it() -> None:
    api = FakeApi()
    api.objects[ROUTES] = [route("r")]
    store = ObjectStore()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(api, store, nursery)
            await wait_until(lambda: store.complete)  # no CRDs: their kinds listed as empty
            assert ROUTES not in [p for p, _ in api.lists]
            await wait_until(lambda: CRDS in api.watches)

            api.event(CRDS, "ADDED", crd("httproutes", "gateway.networking.k8s.io"))
            await wait_until(lambda: names(store, "HTTPRoute") == ["r"])
            assert store.complete

            api.event(CRDS, "DELETED", crd("httproutes", "gateway.networking.k8s.io"))
            await wait_until(lambda: names(store, "HTTPRoute") == [])
            assert store.complete
            nursery.cancel_scope.cancel()


async def test_410_relists_and_deletes_what_was_missed() -> None:
    api = FakeApi()
    api.objects[PODS] = [pod("a", 1), pod("b", 2)]
    store = ObjectStore()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            source = await start(api, store, nursery)
            await wait_until(lambda: PODS in api.watches)
            api.event(PODS, "ADDED", pod("c", 101))
            await wait_until(lambda: names(store, "Pod") == ["a", "b", "c"])

            api.objects[PODS] = [pod("a", 1)]  # b and c deleted while the watch was away
            api.event(PODS, "ERROR", {"kind": "Status", "code": 410})
            await wait_until(lambda: names(store, "Pod") == ["a"])
            pods = source.statistics()["pods"]
            assert (pods.lists, pods.expired, pods.watch_ends, pods.failures) == (2, 1, 0, 0)
            crds = source.statistics()["customresourcedefinitions.apiextensions.k8s.io"]
            assert (crds.phase, crds.lists) == ("watching", 1)
            assert source.statistics()["httproutes.gateway.networking.k8s.io"].phase == "absent"
            nursery.cancel_scope.cancel()


async def test_a_watch_the_server_ends_resumes_from_the_last_version_without_a_relist() -> None:
    api = FakeApi()
    store = ObjectStore()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            source = await start(api, store, nursery)
            await wait_until(lambda: PODS in api.watches)
            api.event(PODS, "ADDED", pod("a", 120))
            api.event(PODS, "BOOKMARK", {"metadata": {"resourceVersion": "130"}})
            api.watches[PODS][-1][1].send.send_nowait(None)  # the server's timeoutSeconds
            await wait_until(lambda: len(api.watches[PODS]) == 2)
            assert api.watches[PODS][1][0] == "130"
            assert [p for p, _ in api.lists].count(PODS) == 1

            api.gone_once.add(PODS)  # the next watch is refused with 410: a re-list
            api.watches[PODS][-1][1].send.send_nowait(None)
            await wait_until(lambda: [p for p, _ in api.lists].count(PODS) == 2)
            assert names(store, "Pod") == []  # a was not in the new list
            await wait_until(lambda: len(api.watches[PODS]) == 3)
            pods = source.statistics()["pods"]
            assert (pods.phase, pods.listed, pods.lists, pods.watches) == ("watching", True, 2, 3)
            assert (pods.watch_ends, pods.expired, pods.failures) == (2, 1, 0)
            nursery.cancel_scope.cancel()
