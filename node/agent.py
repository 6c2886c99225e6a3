"""The node agent: keeps every meshed pod of its node captured and handed to ztunnel.

Inputs: the API server (this node's pods, the namespaces' labels), the CNI plugin's
requests (:mod:`node.cni_server`: a pod sandbox exists, with its network namespace and
addresses), and its records of earlier ``ADD`` s (:mod:`node.records`). For each pod
that should be captured (:func:`node.pods.skip_reason` says None) it installs the
in-pod rules (:func:`mesh.capture.install_capture`: one ``iptables-restore --noflush``
batch) and hands the pod to ztunnel (:class:`ZtunnelLink`); for a pod that should no
longer be, ztunnel lets go first, then the rules go. A running pod that gains the
label is found without restart: from the netns recorded at ``ADD``, else by a process
of the pod (:func:`node.procscan.find_pod_netns`).

Restarts lose nothing: the pods are listed again, pods still meshed are handed again
(rules and hand-over are idempotent), records of pods that left have their rules
removed. ztunnel releases what the agent no longer hands only once the agent says its
set is complete (:meth:`ZtunnelLink.synced`), so a restarting agent never touches
traffic.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

import structlog
import trio

from k8s.sources.api import Requests
from k8s.sources.watch import Change, Delete, Listed, Put
from mesh.backoff import Backoff
from mesh.commands import CommandFailed
from node.pods import PodView, ipv4s, pod_view, skip_reason
from node.procscan import find_pod_netns, namespace_key
from node.records import PodRecord, Records
from node.sources import PodSource

log = structlog.get_logger("node.agent")

ENROLL_TIMEOUT = 15.0  # for ztunnel's ack of one pod; the plugin waits a little longer
RETRY = Backoff(initial=0.5, maximum=15.0)
STATUS_ANNOTATION = "ambit.io/node-status"
STATUS_INTERVAL = 2.0  # at most one status patch per this many seconds

CaptureFn = Callable[[str], Awaitable[None]]


class ZtunnelLink(Protocol):
    """The agent's end of ztunnel's pod socket (:mod:`node.zds_client`)."""

    @property
    def connected(self) -> bool: ...

    async def add(self, pod: Mapping[str, Any], netns: str) -> None:
        """Returns once ztunnel acknowledged the pod (its listeners are up)."""

    async def remove(self, uid: str) -> None:
        """Returns once ztunnel released the pod."""

    def synced(self) -> None:
        """The agent's set is complete: ztunnel may release pods not in it."""


class EnrollError(Exception):
    """A pod could not be captured or handed to ztunnel."""


@dataclass
class _Enrolled:
    key: str
    netns: str
    ips: tuple[str, ...]


@dataclass
class AgentConfig:
    node: str
    state_dir: Path
    excluded: frozenset[str] = frozenset({"kube-system"})
    pod_name: str | None = None  # where the status annotation goes
    pod_namespace: str | None = None
    proc: Path = Path("/proc")
    cni_install: bool = True  # False: no plugin to wait for (local mode is the runtime)


@dataclass
class _Gate:
    pods: bool = False
    namespaces: bool = False


@dataclass
class NodeAgent:
    config: AgentConfig
    source: PodSource  # the API server's watches, or local mode's objects files
    requests: Requests  # GET a pod or namespace not seen yet; PATCH the status
    ztunnel: ZtunnelLink
    install_rules: CaptureFn
    remove_rules: CaptureFn
    cni_status: Callable[[], Mapping[str, Any]] = lambda: {"installed": False}
    pods: dict[str, PodView] = field(default_factory=dict)  # uid -> pod on this node
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    enrolled: dict[str, _Enrolled] = field(default_factory=dict)  # uid -> ...
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    listed: _Gate = field(default_factory=_Gate)

    def __post_init__(self) -> None:
        self.records = Records(self.config.state_dir)
        self._changed = trio.Event()
        self._locks: dict[str, trio.Lock] = {}
        self._status_dirty = trio.Event()
        self._synced = False

    # ---- running --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.records.load()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.source.follow_pods, self._on_pods)
            nursery.start_soon(self.source.follow_namespaces, self._on_namespaces)
            nursery.start_soon(self._reconcile_forever)
            if self.config.pod_name and self.config.pod_namespace:
                nursery.start_soon(self._write_status_forever)
            log.info("node_agent_started", node=self.config.node,
                     recorded=len(self.records.all()))  # fmt: skip
            task_status.started()

    def ready(self) -> tuple[bool, str]:
        cni = self.cni_status()
        if self.config.cni_install and not cni.get("installed"):
            return False, f"CNI plugin not installed: {cni.get('error') or 'waiting'}"
        if not (self.listed.pods and self.listed.namespaces):
            return False, "pods and namespaces not listed yet"
        return True, f"{len(self.enrolled)} pods enrolled"

    def status(self) -> dict[str, Any]:
        """The status annotation's document (docs/node.md)."""
        return {
            "cni": dict(self.cni_status()),
            "ztunnel": {"connected": self.ztunnel.connected},
            "enrolled": sorted(e.key for e in self.enrolled.values()),
            "failed": dict(sorted(self.failed.items())),
            "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    # ---- the API's view ---------------------------------------------------------------

    def _on_pods(self, changes: tuple[Change, ...]) -> None:
        for change in changes:
            if isinstance(change, Put):
                pod = pod_view(change.raw)
                if pod.node == self.config.node:
                    self.pods[pod.uid] = pod
            elif isinstance(change, Delete):
                self.pods.pop(pod_view(change.raw).uid, None)
            elif isinstance(change, Listed):
                self.listed.pods = True
        self._poke()

    def _on_namespaces(self, changes: tuple[Change, ...]) -> None:
        for change in changes:
            if isinstance(change, Put):
                meta = change.raw.get("metadata") or {}
                labels = meta.get("labels") or {}
                self.namespaces[str(meta.get("name"))] = {str(k): str(v) for k, v in labels.items()}
            elif isinstance(change, Delete):
                self.namespaces.pop(change.key[1], None)
            elif isinstance(change, Listed):
                self.listed.namespaces = True
        self._poke()

    def _poke(self) -> None:
        self._changed.set()

    def _lock(self, uid: str) -> trio.Lock:
        return self._locks.setdefault(uid, trio.Lock())

    def _skip(self, pod: PodView) -> str | None:
        return skip_reason(pod, self.namespaces.get(pod.namespace), self.config.excluded)

    # ---- reconciling ------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        failures = 0
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            if not (self.listed.pods and self.listed.namespaces):
                continue
            ok = await self.reconcile()
            if not self._synced:
                self._synced = True
                self.ztunnel.synced()  # the full set is handed: ztunnel may release the rest
                log.info("node_agent_synced", enrolled=len(self.enrolled))
            self._status_dirty.set()
            if ok:
                failures = 0
            else:  # something failed: try again after a backoff, or on the next change
                failures += 1
                with trio.move_on_after(RETRY.delay(failures)):
                    await self._changed.wait()
                self._changed.set()

    async def reconcile(self) -> bool:
        """One pass: let go of recorded pods that left, release what should no longer be
        captured, capture what should. True when nothing failed."""
        ok = True
        wanted = {
            uid: p for uid, p in self.pods.items() if not p.deleting and self._skip(p) is None
        }
        for left in self.records.all():  # gone from the API: let go, and forget
            if left.uid not in self.pods:
                ok &= await self._forget(left)
        for uid in [u for u in self.enrolled if u not in wanted]:  # still there, not meshed
            ok &= await self._release(uid)
        live = {p.key for p in wanted.values()}
        for key in [k for k in self.failed if k not in live]:
            del self.failed[key]
        for uid, pod in wanted.items():
            if uid in self.enrolled:
                continue
            record = self.records.get(uid)
            netns = record.netns if record and namespace_key(record.netns) else None
            netns = netns or await trio.to_thread.run_sync(find_pod_netns, uid, self.config.proc)
            ips = ipv4s(pod.ips) or (record.ips if record else ())
            if netns is None or not ips:
                if pod.phase == "Running":
                    self.failed[pod.key] = (
                        "no network namespace found for the running pod" if netns is None
                        else "the pod has no IPv4 address"
                    )  # fmt: skip
                    ok = False
                continue  # not started yet: its ADD will bring it
            try:
                await self.enroll(pod, netns, ips)
            except EnrollError:
                ok = False
        return ok

    async def enroll(self, pod: PodView, netns: str, ips: tuple[str, ...]) -> None:
        """Capture rules in ``netns``, then ztunnel takes the pod; raises EnrollError."""
        async with self._lock(pod.uid):
            current = self.enrolled.get(pod.uid)
            # The same namespace by another path (/proc/PID/ns/net found first, then
            # the ADD's /run/netns/NAME) is the same pod: nothing to do again.
            if current is not None and _same_netns(current.netns, netns):
                return
            try:
                await self.install_rules(netns)
            except (CommandFailed, OSError) as exc:
                self._failed(pod, f"capture rules could not be installed: {exc}")
            handed = {"uid": pod.uid, "namespace": pod.namespace, "name": pod.name,
                      "serviceAccount": pod.service_account, "ips": list(ips)}  # fmt: skip
            try:
                with trio.fail_after(ENROLL_TIMEOUT):
                    await self.ztunnel.add(handed, netns)
            except (OSError, TimeoutError, trio.TooSlowError, RuntimeError) as exc:
                self._failed(pod, f"ztunnel did not take the pod: {exc}")
            self.enrolled[pod.uid] = _Enrolled(pod.key, netns, ips)
            self.failed.pop(pod.key, None)
            log.info("pod_enrolled", pod=pod.key, uid=pod.uid, netns=netns, ips=list(ips))
            self._status_dirty.set()

    def _failed(self, pod: PodView, reason: str) -> NoReturn:
        self.failed[pod.key] = reason
        log.warning("pod_enroll_failed", pod=pod.key, reason=reason)
        self._status_dirty.set()
        raise EnrollError(reason)

    async def _let_go(self, uid: str, key: str, netns: str) -> bool:
        """ztunnel lets go of the pod, then its rules are removed (if its netns is still
        there). Called under the pod's lock."""
        try:
            with trio.fail_after(ENROLL_TIMEOUT):
                await self.ztunnel.remove(uid)
        except (OSError, trio.TooSlowError, RuntimeError) as exc:
            log.warning("pod_release_failed", pod=key, reason=str(exc))
            return False
        if namespace_key(netns) is not None:
            try:
                await self.remove_rules(netns)
            except (CommandFailed, OSError) as exc:
                log.warning("pod_rules_removal_failed", pod=key, reason=str(exc))
                return False
        return True

    async def _release(self, uid: str) -> bool:
        """An enrolled pod let go (:meth:`_let_go`) and no longer enrolled."""
        async with self._lock(uid):
            enrolled = self.enrolled.get(uid)
            if enrolled is None:
                return True
            if not await self._let_go(uid, enrolled.key, enrolled.netns):
                return False
            del self.enrolled[uid]
            log.info("pod_released", pod=enrolled.key, uid=uid)
            self._status_dirty.set()
            return True

    async def _forget(self, record: PodRecord) -> bool:
        """A recorded pod that is gone (from the API, or by DEL): let go of it, then its
        record. One this agent did not enroll (it left while the agent was down) may still
        be served by ztunnel and have rules in its namespace: those go too."""
        key = f"{record.namespace}/{record.name}"
        if record.uid in self.enrolled:
            if not await self._release(record.uid):
                return False
        else:
            async with self._lock(record.uid):
                if not await self._let_go(record.uid, key, record.netns):
                    return False
        self.records.drop(record.uid)
        log.info("pod_forgotten", pod=key, uid=record.uid)
        return True

    # ---- the CNI plugin's requests ----------------------------------------------------

    async def cni_add(self, request: Mapping[str, Any]) -> dict[str, Any]:
        pod_ref = request.get("pod") or {}
        namespace, name = str(pod_ref.get("namespace") or ""), str(pod_ref.get("name") or "")
        netns = str(request.get("netns") or "")
        ips = ipv4s([str(i) for i in request.get("ips") or []])
        pod = await self._fetch_pod(namespace, name)
        if pod is None:
            return {"error": f"pod {namespace}/{name} not found in the API server"}
        uid = str(pod_ref.get("uid") or "") or pod.uid
        if uid != pod.uid:
            return {"error": f"pod {namespace}/{name} has uid {pod.uid}, not {uid}"}
        if namespace not in self.namespaces and not await self._fetch_namespace(namespace):
            return {"error": f"namespace {namespace} not found in the API server"}
        usable = bool(netns) and namespace_key(netns) is not None
        if usable and ips:  # also for a pod skipped now: its namespace may be labelled later
            self.records.put(PodRecord(uid, namespace, name, netns, ips,
                                       str(request.get("containerId") or "")))  # fmt: skip
            self.pods.setdefault(uid, pod)
        reason = self._skip(pod)
        if reason is not None:
            return {"result": "skipped", "reason": reason}
        if not usable:
            return {"error": f"network namespace {netns!r} does not exist"}
        if not ips:
            return {"error": "no IPv4 address in the CNI result"}
        try:
            await self.enroll(pod, netns, ips)
        except EnrollError as exc:
            return {"error": str(exc)}
        return {"result": "enrolled"}

    async def cni_del(self, request: Mapping[str, Any]) -> dict[str, Any]:
        pod_ref = request.get("pod") or {}
        uid = str(pod_ref.get("uid") or "")
        if not uid:  # find it by name among what the agent knows
            key = f"{pod_ref.get('namespace')}/{pod_ref.get('name')}"
            uid = next((u for u, e in self.enrolled.items() if e.key == key), "")
        record = self.records.get(uid) if uid else None
        if record is not None:
            await self._forget(record)
        elif uid:
            await self._release(uid)
        return {"result": "released"}

    async def cni_check(self, request: Mapping[str, Any]) -> dict[str, Any]:
        uid = str((request.get("pod") or {}).get("uid") or "")
        if uid in self.enrolled:
            return {"result": "enrolled"}
        pod = self.pods.get(uid)
        if pod is not None and (reason := self._skip(pod)) is not None:
            return {"result": "skipped", "reason": reason}
        key = pod.key if pod else uid
        return {"error": f"pod {key} is not enrolled: {self.failed.get(key, 'not seen yet')}"}

    async def _fetch_pod(self, namespace: str, name: str) -> PodView | None:
        for pod in self.pods.values():
            if pod.namespace == namespace and pod.name == name:
                return pod
        status, body = await self.requests.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{name}"
        )
        return pod_view(body) if status == 200 else None

    async def _fetch_namespace(self, namespace: str) -> bool:
        status, body = await self.requests.request("GET", f"/api/v1/namespaces/{namespace}")
        if status != 200:
            return False
        labels = (body.get("metadata") or {}).get("labels") or {}
        self.namespaces.setdefault(namespace, {str(k): str(v) for k, v in labels.items()})
        return True

    # ---- status on the agent's own pod --------------------------------------------------

    async def _write_status_forever(self) -> None:
        # Through /status: the agent may patch only that (its RBAC, and an admission
        # policy that keeps it to its own pod's annotations: docs/node.md, "Privileges").
        ns, pod = self.config.pod_namespace, self.config.pod_name
        path = f"/api/v1/namespaces/{ns}/pods/{pod}/status"
        last = ""
        while True:
            await self._status_dirty.wait()
            self._status_dirty = trio.Event()
            doc = self.status()
            text = json.dumps({k: v for k, v in doc.items() if k != "time"}, sort_keys=True)
            if text != last:
                patch = {"metadata": {"annotations": {STATUS_ANNOTATION: json.dumps(doc)}}}
                status, body = await self.requests.request(
                    "PATCH", path, patch, content_type="application/merge-patch+json"
                )
                if status == 200:
                    last = text
                else:
                    log.warning("node_status_not_written", status=status,
                                reason=str(body.get("message", ""))[:200])  # fmt: skip
                    self._status_dirty.set()
            await trio.sleep(STATUS_INTERVAL)


def _same_netns(a: str, b: str) -> bool:
    """Whether two paths name one network namespace (compared by inode and device)."""
    key = namespace_key(a)
    return a == b or (key is not None and key == namespace_key(b))
