"""The waypoint deployer on a cluster: keeps each waypoint Gateway's ServiceAccount,
Service and Deployment (:mod:`k8s.waypoint_kube`) applied, and the ``ambit-waypoint``
GatewayClass.

:func:`run_deployer` follows the control plane's :class:`~k8s.store.ObjectStore`: once
every kind is listed (the store's gate) and after each change, it plans what the
objects want (:func:`k8s.waypoint_kube.plan`) and applies, with Server-Side Apply
(field manager ``ambit``, forcing), only the documents that differ from what it last
applied at that path. What it made lives and dies with its Gateway through the owner
reference (the garbage collector deletes it with the Gateway); a Gateway that leaves the
class keeps its objects, so the deployer deletes them, by name, only those carrying its
label and naming that Gateway (uid) their owner. Every ``resync`` seconds it forgets
what it applied, so an object deleted behind its back (the Deployment, which the store
does not watch) comes back.

A request that fails (refused, 4xx/5xx, no answer) is tried again after
:class:`~mesh.backoff.Backoff`'s delay for that path (0.5 s doubling to 30 s), or at once
if its document changed meanwhile; the other paths are not held up. Each path's failure
is logged once (``waypoint_apply_failed``, ``waypoint_delete_failed``) until its error
changes, and its end once (``waypoint_apply_recovered``). A Gateway whose name cannot
name its objects is logged once (``waypoint_refused``) and gets nothing. Status is not
written here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from ca.kube import ApiUnavailable
from k8s.events import EventRecorder, Regarding
from k8s.manifests import Gateway, K8sObject
from k8s.sources.api import Requests, namespace_going, server_side_apply
from k8s.store import ObjectStore
from k8s.waypoint_kube import KubeDeployerSettings, Leaver, owned_by, plan
from mesh.backoff import Backoff

log = structlog.get_logger("k8s.kube_deployer")

FIELD_MANAGER: Final = "ambit"
GATEWAY_API_VERSION: Final = "gateway.networking.k8s.io/v1"


@dataclass(frozen=True)
class DeployerTiming:
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    resync: float = 600.0  # seconds between applying everything again


def _reason(status: int, body: Mapping[str, Any]) -> str:
    return f"HTTP {status}: {str(body.get('message') or body.get('reason') or '')[:300]}"


@dataclass
class _Retry:
    """A path whose last request failed: not tried again before ``not_before`` unless
    its document changed."""

    failures: int
    not_before: float
    document: Mapping[str, Any] | None  # what was applied; None: a delete


class KubeDeployer:
    """What the deployer remembers between syncs: the document it last applied at each
    path, the Gateways it has cleaned up after, the paths waiting to be tried again, and
    the errors it has logged."""

    def __init__(
        self,
        api: Requests,
        settings: KubeDeployerSettings,
        backoff: Backoff | None = None,
        events: EventRecorder | None = None,
    ) -> None:
        self.api = api
        self.events = events  # a refused Gateway gets a Warning Event, once per error
        self.settings = settings
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._applied: dict[str, Mapping[str, Any]] = {}
        self._cleaned: set[Leaver] = set()
        self._retries: dict[str, _Retry] = {}
        self._logged: dict[str, str] = {}  # path or Gateway: the error logged for it
        # Successful applies and deletes by path, for statistics (and tests).
        self.applied: Counter[str] = Counter()
        self.deleted: Counter[str] = Counter()

    def forget(self) -> None:
        """Apply (and check) everything again at the next sync."""
        self._applied.clear()
        self._cleaned.clear()

    async def sync(self, objects: Iterable[K8sObject]) -> float | None:
        """Carry out the plan for ``objects`` (the Gateways are enough), but for the paths
        whose retry is not due; when the first of those is due (``trio.current_time()``),
        or None if nothing waits."""
        objects = list(objects)
        wanted = plan(objects, self.settings)
        refused = {f"Gateway {ns}/{name}": error for (ns, name), error in wanted.refused.items()}
        await self._tell(objects, wanted.refused)
        current = {*wanted.wanted, *refused, *(p for g in wanted.leavers for p in g.paths)}
        for table in (self._logged, self._retries):
            for key in [k for k in table if k not in current]:
                del table[key]  # its Gateway is gone: logged again if it comes back
        for key, error in refused.items():
            self._failed(key, "waypoint_refused", error)
        for path in [p for p in self._applied if p not in wanted.wanted]:
            del self._applied[path]  # its Gateway is gone (the collector's) or left
        for path, doc in wanted.wanted.items():
            if self._applied.get(path) != doc and self._due(path, doc):
                await self._apply(path, doc)
        self._cleaned &= set(wanted.leavers)
        for leaver in wanted.leavers:
            if leaver not in self._cleaned and all(self._due(p, None) for p in leaver.paths):
                await self._clean(leaver)
        return min((r.not_before for r in self._retries.values()), default=None)

    async def _tell(self, objects: list[K8sObject], refused: Mapping[tuple[str, str], str]) -> None:
        """A Warning Event on each Gateway newly refused (its error not yet logged)."""
        if self.events is None:
            return
        for obj in objects:
            error = refused.get((obj.namespace, obj.name))
            key = f"Gateway {obj.namespace}/{obj.name}"
            if isinstance(obj, Gateway) and error and self._logged.get(key) != error:
                where = Regarding(GATEWAY_API_VERSION, "Gateway", obj.namespace, obj.name, obj.uid)
                await self.events.warn(where, "WaypointNotDeployed", error)

    def _due(self, path: str, document: Mapping[str, Any] | None) -> bool:
        retry = self._retries.get(path)
        return (
            retry is None or retry.document != document or trio.current_time() >= retry.not_before
        )

    async def _apply(self, path: str, doc: Mapping[str, Any]) -> None:
        try:
            status, body = await server_side_apply(self.api, path, doc, field_manager=FIELD_MANAGER)
        except ApiUnavailable as exc:
            status, body = 0, {"message": str(exc)}
        if namespace_going(status, body):  # its Gateway goes with it: nothing to make
            log.debug("waypoint_apply_skipped", object=path, reason="namespace terminating")
            self._applied[path] = doc
            return
        if status not in (200, 201):
            self._failed(path, "waypoint_apply_failed", _reason(status, body), doc)
            return
        self._applied[path] = doc
        self.applied[path] += 1
        self._succeeded(path)

    async def _clean(self, leaver: Leaver) -> None:
        """Delete what the deployer made for a Gateway it no longer serves."""
        ok = True
        for path in leaver.paths:
            try:
                status, body = await self.api.request("GET", path)
                if status == 200 and owned_by(body, leaver):
                    uid = body["metadata"]["uid"]
                    options = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
                    status, body = await self.api.request("DELETE", path, options)
                    if status in (200, 202):
                        self.deleted[path] += 1
                        log.info("waypoint_object_deleted", object=path, reason="class_left")
            except ApiUnavailable as exc:
                status, body = 0, {"message": str(exc)}
            if status in (200, 202, 404, 409):  # 409: the uid changed, not ours any more
                self._succeeded(path)
            else:
                self._failed(path, "waypoint_delete_failed", _reason(status, body))
                ok = False
        if ok:
            self._cleaned.add(leaver)

    def _succeeded(self, path: str) -> None:
        self._retries.pop(path, None)
        if self._logged.pop(path, None) is not None:
            log.info("waypoint_apply_recovered", object=path)

    def _failed(
        self, key: str, event: str, error: str, document: Mapping[str, Any] | None = None
    ) -> None:
        if self._logged.get(key) != error:
            log.warning(event, object=key, reason=error)
            self._logged[key] = error
        if event != "waypoint_refused":
            before = self._retries.get(key)
            failures = before.failures + 1 if before is not None else 1
            not_before = trio.current_time() + self.backoff.delay(failures)
            self._retries[key] = _Retry(failures, not_before, document)


async def run_deployer(
    api: Requests,
    store: ObjectStore,
    settings: KubeDeployerSettings,
    *,
    timing: DeployerTiming | None = None,
    events: EventRecorder | None = None,
    task_status: trio.TaskStatus[KubeDeployer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the waypoints of ``store``'s Gateways applied, until cancelled;
    ``task_status.started(deployer)`` at once (it acts once the store is complete)."""
    timing = timing or DeployerTiming()
    deployer = KubeDeployer(api, settings, timing.backoff, events)
    task_status.started(deployer)
    seen = 0
    resync_at = trio.current_time() + timing.resync
    while True:
        while not store.complete:
            seen = await store.wait_changed(seen)
        seen = store.version
        objects = [e.obj for kind in ("GatewayClass", "Gateway") for e in store.entries(kind)]
        retry_at = await deployer.sync(objects)
        with trio.move_on_at(min(resync_at, math.inf if retry_at is None else retry_at)):
            seen = await store.wait_changed(seen)
        if trio.current_time() >= resync_at:
            deployer.forget()
            resync_at = trio.current_time() + timing.resync
