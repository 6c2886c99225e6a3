"""The Kubernetes API source's Trio loop: ``ambit controlplane --source kubernetes``.

:class:`KubernetesSource` runs one task per API resource
(:data:`k8s.sources.resources.RESOURCES`): it carries out the requests that resource's
:class:`k8s.sources.watch.ResourceWatch` asks for (a paged LIST, a WATCH with bookmarks)
through the :class:`k8s.sources.api.Api` seam, hands it the answers, and feeds the changes
to the store through :class:`k8s.sources.feed.StoreFeed`, the same store and translation
as local mode and the files source. Nothing is published before every kind is listed once
(the store's gate). Resources served by CRDs follow the CustomResourceDefinitions (istiod's
delayed informers). The requests themselves, and everything asyncio, are
:mod:`k8s.sources.kubernetes`'s. :meth:`KubernetesSource.statistics` counts, per
resource, the complete lists, the watches opened and those the server ended, the expired
resourceVersions and the failed requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TypeAlias

import structlog
import trio

from k8s.sources.api import (
    Api,
    Counts,
    Gone,
    RequestFailed,
    ResourceStatistics,
)
from k8s.sources.feed import Refusal, StoreFeed
from k8s.sources.kubernetes import NETWORK_ERRORS, KubeSourceConfig, open_kube_api
from k8s.sources.resources import (
    CRD_RESOURCE,
    Resource,
    chosen_version,
    resources_of,
    served_versions,
)
from k8s.sources.strip import stripper
from k8s.sources.watch import ListRequest, Phase, ResourceWatch, Step, WatchRequest
from k8s.store import ObjectStore

log = structlog.get_logger("k8s.sources.kubernetes")
After: TypeAlias = Callable[[Step], None] | None


class KubernetesSource:
    """Feeds an :class:`ObjectStore` from the API server; :meth:`run` until cancelled."""

    def __init__(self, config: KubeSourceConfig | None = None) -> None:
        self.config = config or KubeSourceConfig()
        self._feed: StoreFeed | None = None
        self._api: Api | None = None
        self._machines: dict[Resource, ResourceWatch] = {}
        self._versions: dict[Resource, str | None] = {}
        self._scopes: dict[Resource, trio.CancelScope] = {}
        self._counts: dict[Resource, Counts] = {}

    def statistics(self) -> dict[str, ResourceStatistics]:
        """Each resource's counters by its name (``pods``,
        ``customresourcedefinitions.apiextensions.k8s.io``...)."""
        return {
            resource.name: ResourceStatistics(
                machine.phase.value, machine.listed, **vars(self._count(resource))
            )
            for resource, machine in self._machines.items()
        }

    def _count(self, resource: Resource) -> Counts:
        return self._counts.setdefault(resource, Counts())

    @property
    def errors(self) -> list[str]:
        """Objects the API server holds that ambit refuses, each with why."""
        return self._feed.errors if self._feed is not None else []

    def refusals(self) -> list[Refusal]:
        """The same, with what names each object (for an Event about it)."""
        return self._feed.refusals if self._feed is not None else []

    async def run(
        self,
        store: ObjectStore,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch every resource of the store's kinds; ``task_status.started()`` once the
        watches are started (not listed: the store's gate says when they are)."""
        async with open_kube_api(self.config) as api:
            await self.serve(api, store, task_status=task_status)

    async def serve(
        self,
        api: Api,
        store: ObjectStore,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`run` with the requests made by ``api``."""
        self._api = api
        resources = resources_of(store.kinds)
        self._feed = StoreFeed(store, resources)
        async with trio.open_nursery() as nursery:
            for resource in resources:
                machine = self._machine(resource)
                if not resource.crd:
                    self._start(nursery, resource, resource.versions[0], machine.start())
            if any(r.crd for r in resources):
                crds = ResourceWatch(
                    strip=stripper(CRD_RESOURCE.kind, "apiextensions.k8s.io/v1"),
                    limit=self.config.page_limit,
                )
                self._machines[CRD_RESOURCE] = crds
                nursery.start_soon(self._serve_crds, nursery, crds)
            log.info("kube_source_started", resources=[r.name for r in resources])
            task_status.started()

    def _machine(self, resource: Resource) -> ResourceWatch:
        machine = ResourceWatch(limit=self.config.page_limit)
        self._machines[resource] = machine
        return machine

    def _start(self, nursery: trio.Nursery, resource: Resource, version: str, first: Step) -> None:
        machine = self._machines[resource]
        machine.strip = stripper(resource.kind, resource.api_version(version))
        scope = trio.CancelScope()
        self._scopes[resource] = scope
        self._versions[resource] = version
        nursery.start_soon(self._serve_resource, scope, resource, resource.path(version), first)

    # --- The CRDs: which resources are served --------------------------------------------

    async def _serve_crds(self, nursery: trio.Nursery, machine: ResourceWatch) -> None:
        path = CRD_RESOURCE.path("v1")

        def changed(step: Step) -> None:
            if machine.listed:
                self._follow_crds(nursery, served_versions(machine.cache.values()))

        await self._drive(CRD_RESOURCE, path, machine, machine.start(), after=changed)

    def _follow_crds(self, nursery: trio.Nursery, served: Mapping[str, tuple[str, ...]]) -> None:
        """Start, stop or move the CRD resources to what the CRDs now serve. Runs without
        a checkpoint, so a moved resource's deletes and its gate closing land together."""
        assert self._feed is not None
        for resource, machine in self._machines.items():
            if not resource.crd or resource == CRD_RESOURCE:
                continue
            version = chosen_version(resource, served)
            if resource in self._versions and self._versions[resource] == version:
                continue
            old_scope = self._scopes.pop(resource, None)
            if old_scope is not None:
                old_scope.cancel()
            self._versions[resource] = version
            if version is None:
                log.info("kube_resource_absent", resource=resource.name)
                self._feed.apply(resource, machine.absent().changes)
                continue
            if machine.phase not in (Phase.IDLE, Phase.ABSENT):  # served at another version
                self._feed.apply(resource, machine.absent().changes)
            log.info("kube_resource_served", resource=resource.name, version=version)
            self._start(nursery, resource, version, machine.present())

    # --- One resource --------------------------------------------------------------------

    async def _serve_resource(
        self, scope: trio.CancelScope, resource: Resource, path: str, first: Step
    ) -> None:
        with scope:
            await self._drive(resource, path, self._machines[resource], first, scope=scope)

    async def _drive(
        self,
        resource: Resource,
        path: str,
        machine: ResourceWatch,
        step: Step,
        *,
        after: After = None,
        scope: trio.CancelScope | None = None,
    ) -> None:
        """Carry out what ``machine`` asks, feeding its changes, until it asks nothing.
        Once ``scope`` is cancelled (the CRD went or moved: the machine is no longer this
        task's), an answer that was already in is dropped, never fed to the machine."""
        assert self._api is not None
        failures = 0  # in a row: requests that failed, watches that ended in an error

        def superseded() -> bool:
            return scope is not None and scope.cancel_called

        while True:
            self._apply(resource, step, after)
            if step.request is None:
                return
            if failures:
                await trio.sleep(self.config.backoff.delay(failures))
            try:
                if isinstance(step.request, ListRequest):
                    items, rv, token = await self._api.list_page(path, step.request)
                    if superseded():
                        return
                    step = machine.list_page(items, rv, token or None)
                    if not token:
                        self._count(resource).lists += 1
                        log.info("kube_listed", resource=resource.name, objects=len(machine.cache),
                                 relists=machine.relists)  # fmt: skip
                else:
                    step = await self._watch(resource, path, machine, step.request, after, scope)
                    if superseded():
                        return
            except Gone:
                if superseded():
                    return
                self._expired(resource)
                step = machine.gone()
            except (RequestFailed, *NETWORK_ERRORS) as exc:
                if superseded():
                    return
                failures += 1
                self._count(resource).failures += 1
                if failures == 1:
                    log.warning(
                        "kube_request_failed", resource=resource.name, reason=str(exc),
                        hint=getattr(exc, "hint", "") or "is the API server reachable?",
                    )  # fmt: skip
                step = Step((), machine.request)
                continue
            if step.backoff:
                failures += 1
            elif failures:
                log.info("kube_request_recovered", resource=resource.name, failures=failures)
                failures = 0

    def _expired(self, resource: Resource) -> None:
        self._count(resource).expired += 1
        log.info("kube_resource_version_expired", resource=resource.name)

    def _apply(self, resource: Resource, step: Step, after: After) -> None:
        if resource != CRD_RESOURCE:
            assert self._feed is not None
            self._feed.apply(resource, step.changes)
        if after is not None and step.changes:
            after(step)

    async def _watch(
        self,
        resource: Resource,
        path: str,
        machine: ResourceWatch,
        request: WatchRequest,
        after: After,
        scope: trio.CancelScope | None,
    ) -> Step:
        """One watch: events fed until it ends (the server's timeout: resume), or the
        machine asks for something else (410: a LIST; an ERROR: backoff)."""
        assert self._api is not None
        seconds = random.randrange(self.config.watch_timeout, 2 * self.config.watch_timeout)
        watch = await self._api.open_watch(path, request.resource_version, seconds)
        counts = self._count(resource)
        counts.watches += 1
        try:
            while True:
                try:
                    event = await watch.next_event()
                except NETWORK_ERRORS as exc:
                    if scope is not None and scope.cancel_called:
                        return Step()
                    log.info("kube_watch_cut", resource=resource.name, reason=str(exc))
                    counts.failures += 1
                    return Step((), machine.watch_ended().request, backoff=True)
                if scope is not None and scope.cancel_called:
                    return Step()
                if event is None:
                    counts.watch_ends += 1
                    return machine.watch_ended()
                step = machine.event(*event)
                if not isinstance(step.request, WatchRequest) or step.backoff:
                    if isinstance(step.request, ListRequest):  # an ERROR event with 410
                        self._expired(resource)
                    if step.backoff:
                        counts.failures += 1
                        log.warning("kube_watch_error", resource=resource.name, error=event[1])
                    return step
                self._apply(resource, step, after)
        finally:
            watch.close()
