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

A request that fails (refused, 4xx/5xx, no answer) is tried again at the next sync,
which comes after :class:`~mesh.backoff.Backoff`'s delay while anything fails; each
object's failure is logged once (``waypoint_apply_failed``, ``waypoint_delete_failed``)
until its error changes, and its end once (``waypoint_apply_recovered``). A Gateway
whose name cannot name its objects is logged once (``waypoint_refused``) and gets
nothing. Status is not written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from ca.kube import ApiUnavailable
from k8s.manifests import K8sObject
from k8s.sources.kubernetes import ClientApi, server_side_apply
from k8s.store import ObjectStore
from k8s.waypoint_kube import KubeDeployerSettings, Leaver, owned_by, plan
from mesh.backoff import Backoff

log = structlog.get_logger("k8s.kube_deployer")

FIELD_MANAGER: Final = "ambit"


@dataclass(frozen=True)
class DeployerTiming:
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    resync: float = 600.0  # seconds between applying everything again


def _reason(status: int, body: Mapping[str, Any]) -> str:
    return f"HTTP {status}: {str(body.get('message') or body.get('reason') or '')[:300]}"


class KubeDeployer:
    """What the deployer remembers between syncs: the document it last applied at each
    path, the Gateways it has cleaned up after, and the errors it has logged."""

    def __init__(self, api: ClientApi, settings: KubeDeployerSettings) -> None:
        self.api = api
        self.settings = settings
        self._applied: dict[str, Mapping[str, Any]] = {}
        self._cleaned: set[Leaver] = set()
        self._logged: dict[str, str] = {}  # path or Gateway: the error logged for it
        self.applies = 0  # successful applies, for tests and statistics
        self.deletes = 0

    def forget(self) -> None:
        """Apply (and check) everything again at the next sync."""
        self._applied.clear()
        self._cleaned.clear()

    async def sync(self, objects: Iterable[K8sObject]) -> bool:
        """Carry out the plan for ``objects`` (the Gateways are enough); whether every
        request succeeded."""
        wanted = plan(objects, self.settings)
        refused = {f"Gateway {ns}/{name}": error for (ns, name), error in wanted.refused.items()}
        current = {*wanted.wanted, *refused, *(p for g in wanted.leavers for p in g.paths)}
        for key in [k for k in self._logged if k not in current]:
            del self._logged[key]  # its Gateway is gone: logged again if it comes back
        for key, error in refused.items():
            self._failed(key, "waypoint_refused", error)
        for path in [p for p in self._applied if p not in wanted.wanted]:
            del self._applied[path]  # its Gateway is gone (the collector's) or left
        ok = True
        for path, doc in wanted.wanted.items():
            if self._applied.get(path) != doc:
                ok = await self._apply(path, doc) and ok
        self._cleaned &= set(wanted.leavers)
        for leaver in wanted.leavers:
            if leaver not in self._cleaned:
                ok = await self._clean(leaver) and ok
        return ok

    async def _apply(self, path: str, doc: Mapping[str, Any]) -> bool:
        try:
            status, body = await server_side_apply(self.api, path, doc, field_manager=FIELD_MANAGER)
        except ApiUnavailable as exc:
            status, body = 0, {"message": str(exc)}
        if status not in (200, 201):
            self._failed(path, "waypoint_apply_failed", _reason(status, body))
            return False
        self._applied[path] = doc
        self.applies += 1
        if self._logged.pop(path, None) is not None:
            log.info("waypoint_apply_recovered", object=path)
        return True

    async def _clean(self, leaver: Leaver) -> bool:
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
                        self.deletes += 1
                        log.info("waypoint_object_deleted", object=path, reason="class_left")
            except ApiUnavailable as exc:
                status, body = 0, {"message": str(exc)}
            if status not in (200, 202, 404, 409):  # 409: the uid changed, not ours
                self._failed(path, "waypoint_delete_failed", _reason(status, body))
                ok = False
            else:
                self._logged.pop(path, None)
        if ok:
            self._cleaned.add(leaver)
        return ok

    def _failed(self, key: str, event: str, error: str) -> None:
        if self._logged.get(key) != error:
            log.warning(event, object=key, reason=error)
            self._logged[key] = error


async def run_deployer(
    api: ClientApi,
    store: ObjectStore,
    settings: KubeDeployerSettings,
    *,
    timing: DeployerTiming | None = None,
    task_status: trio.TaskStatus[KubeDeployer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the waypoints of ``store``'s Gateways applied, until cancelled;
    ``task_status.started(deployer)`` at once (it acts once the store is complete)."""
    timing = timing or DeployerTiming()
    deployer = KubeDeployer(api, settings)
    task_status.started(deployer)
    seen = 0
    failures = 0
    resync_at = trio.current_time() + timing.resync
    while True:
        while not store.complete:
            seen = await store.wait_changed(seen)
        seen = store.version
        if await deployer.sync(e.obj for e in store.entries("Gateway")):
            failures = 0
            with trio.move_on_at(resync_at):
                seen = await store.wait_changed(seen)
        else:
            failures += 1
            until_resync = max(0.0, resync_at - trio.current_time())
            await trio.sleep(min(timing.backoff.delay(failures), until_resync))
        if trio.current_time() >= resync_at:
            deployer.forget()
            resync_at = trio.current_time() + timing.resync
