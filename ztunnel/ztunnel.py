"""The node proxy: keeps every meshed pod on this node captured, as the mesh
model says, and reports what it is doing.

On each new :class:`~mesh.model.MeshSnapshot` (from the config stream) it
serves pods that appeared (certificate first, then the listeners in the pod's
network namespace), releases pods that left or changed, and re-checks the
policy of every open inbound connection. Pods are set up in the background: a
slow CA never holds up the config stream.

Which pods to capture comes through one seam, :meth:`Ztunnel.set_pod` and
:meth:`Ztunnel.release` with a :class:`PodSpec`: the ``ambit ztunnel`` process gets them
from the node agent, handing pods over a unix socket with their namespaces as file
descriptors (:mod:`ztunnel.zds`; ``netns_for`` is None), on Kubernetes and in local mode
alike. In-process tests may instead have the snapshot itself name each pod's namespace
(``netns_for``). Either way a connection's workload is looked up in the current
snapshot by the pod's key, ``<namespace>/<name>``.

ztunnel never runs iptables: the capture rules in each pod belong to the
node-level part that outlives it (:mod:`mesh.capture`, run by the node agent).
While ztunnel is down or a pod's listeners are not up yet, the pod's traffic meets
closed ports and is refused: capture fails closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
import trio

from mesh.backoff import Backoff
from mesh.ca_client import CaRefused, CertificateRequestError
from mesh.certs import CertificateManager
from mesh.hbone import HboneSettings
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.model import MeshSnapshot, Workload
from mesh.netns import NamespaceKey, NetnsError, NetworkNamespace
from mesh.pending import PendingLimits
from mesh.record import Telemetry
from ztunnel.admission import Admission
from ztunnel.pod import CapturedPod

log = structlog.get_logger("ztunnel")

SETUP_RETRY = Backoff(initial=0.2, maximum=10.0)
DIAL_TIMEOUT = 10.0  # to an app, or a passthrough destination: a dropped SYN waits ~2 min


@dataclass(frozen=True)
class PodSpec:
    """What a pod's capture is bound to: only a change of it captures the pod again."""

    uid: str  # "<namespace>/<name>": the snapshot's workload uid, looked up per connection
    ip: str
    identity: SpiffeId
    # Its namespace: the name ``netns_for`` gives (snapshot source), or the (inode, device)
    # of the namespace handed over with the pod (socket source).
    netns: str | NamespaceKey | None
    pod_uid: str | None = None  # Kubernetes' uid (socket source): another is a new pod


def pods_of_snapshot(
    snapshot: MeshSnapshot, node: str, netns_for: Callable[[Workload], str | None]
) -> dict[str, PodSpec]:
    """The snapshot source: the meshed pods of ``node``. A native-tunnel pod (a waypoint)
    speaks HBONE itself: never captured."""
    return {
        w.uid: PodSpec(w.uid, w.ip, w.identity, netns_for(w))
        for w in snapshot.workloads_on_node(node)
        if w.meshed and not w.native_tunnel
    }


@dataclass(eq=False)
class PodSlot:
    """One pod being captured: its spec, and (socket source) the namespace handed over
    with it, the slot's to close when it ends."""

    spec: PodSpec
    netns: NetworkNamespace | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    captured: bool = False
    error: str | None = None
    refused: bool = False  # the last failure was the CA's refusal, not an outage
    pod: CapturedPod | None = None
    done: trio.Event = field(default_factory=trio.Event)  # its task has ended
    _changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        """Wake :meth:`wait_captured`: the slot's state changed."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_captured(self, seconds: float) -> str | None:
        """None once the pod's listeners are up; else why not: the CA's refusal (at once:
        asking again will not change its answer soon), the pod's release, or after
        ``seconds`` the last setup failure. Setup goes on either way."""
        with trio.move_on_after(seconds):
            while not self.captured:
                if self.done.is_set():
                    return "released before its listeners were up"
                if self.refused:
                    return self.error
                await self._changed.wait()
            return None
        return f"listeners not up within {seconds:g}s: {self.error or 'still setting up'}"


class Ztunnel:
    def __init__(
        self,
        *,
        node: str,
        certificates: CertificateManager[WorkloadCertificate],
        netns_for: Callable[[Workload], str | None] | None,
        telemetry: Telemetry,
        settings: HboneSettings | None = None,
        dial_timeout: float = DIAL_TIMEOUT,
        limits: PendingLimits | None = None,
        listen_on_pod_ip: bool = False,
    ) -> None:
        """``netns_for`` names each meshed pod's namespace: the snapshot is the source of
        pods. None: pods come through :meth:`set_pod` and :meth:`release` alone."""
        self.node = node
        self._certs = certificates
        self._netns_for = netns_for
        self._telemetry = telemetry
        self._settings = settings or HboneSettings()
        self._dial_timeout = dial_timeout
        # Pending and half-closed connections, bounded per source across every pod.
        self.admission = Admission(limits)
        # A pod's listeners take every address of its namespace; several pods sharing one
        # namespace (a node running pods without their own) listen on their own IPs.
        self._listen_on_pod_ip = listen_on_pod_ip
        self.snapshot: MeshSnapshot | None = None
        # Whether the set of pods is known in full: from each snapshot, or once the node
        # agent said so (:meth:`pods_complete`); a new ztunnel is not ready before.
        self.pods_known = netns_for is not None
        self._slots: dict[str, PodSlot] = {}
        self.draining = False
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the pods' tasks until cancelled; then every pod is released."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.admission.serve_reports)
            task_status.started()
            await trio.sleep_forever()

    # ---- state ------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Ready once a config arrived and every meshed pod of this node is captured."""
        if self.draining:
            return False, "draining: ztunnel is shutting down"
        if self.snapshot is None:
            return False, "no config from the control plane yet"
        if not self.pods_known:
            return False, "the node agent has not handed over its pods yet"
        waiting = [s.spec.uid for s in self._slots.values() if not s.captured]
        if waiting:
            return False, "pods not captured yet: " + ", ".join(sorted(waiting))
        return True, f"{len(self._slots)} pods captured"

    def status(self) -> dict[str, Any]:
        """What /config_dump shows: the config version, each pod's state (and locality:
        its node's region and zone), and the connections pending or half-closed now (with
        the limits and what was shed)."""
        pods = []
        for slot in sorted(self._slots.values(), key=lambda s: s.spec.uid):
            spec = slot.spec
            cert = self._certs.get(spec.identity)
            workload = self.snapshot.workload(spec.uid) if self.snapshot else None
            locality = workload.locality if workload else None
            pods.append(
                {
                    "uid": spec.uid,
                    "pod_uid": spec.pod_uid,
                    "ip": spec.ip,
                    "identity": str(spec.identity),
                    "locality": locality.to_json() if locality else None,
                    "captured": slot.captured,
                    "error": slot.error,
                    "certificate_expires": cert.not_after.isoformat() if cert else None,
                }
            )
        return {
            "node": self.node,
            "config_version": self.snapshot.version if self.snapshot else None,
            "pods": pods,
            "pending": {
                **asdict(self.admission.statistics()),
                "limits": asdict(self.admission.limits),
            },
        }

    # ---- config updates -----------------------------------------------------------

    async def on_update(self, snapshot: MeshSnapshot) -> None:
        """Apply a new snapshot: capture and release (snapshot source), re-check policies."""
        assert self._nursery is not None, "run() must be started first"
        if self.draining:
            return  # shutting down: the pods are being let go
        self.snapshot = snapshot
        if self._netns_for is not None:
            wanted = pods_of_snapshot(snapshot, self.node, self._netns_for)
            for uid in list(self._slots):
                if uid not in wanted:
                    self.release(uid)
            for spec in wanted.values():
                self.set_pod(spec)  # labels, ports...: looked up per connection, no recapture
        for slot in self._slots.values():
            if slot.pod is not None:
                slot.pod.recheck_policies()
        await trio.lowlevel.checkpoint()

    # ---- the pods, as either source says ----------------------------------------------

    def set_pod(self, spec: PodSpec, netns: NetworkNamespace | None = None) -> PodSlot:
        """Capture the pod ``spec`` describes, in ``netns`` (a namespace handed over, now
        the slot's) or else in the one ``netns_for`` names. The same spec as now keeps the
        capture as it is (``netns`` is closed); another under the same key releases the
        old pod first."""
        assert self._nursery is not None, "run() must be started first"
        assert not self.draining, "a draining ztunnel takes no pods"
        slot = self._slots.get(spec.uid)
        if slot is not None and slot.spec == spec:
            if netns is not None:
                netns.close()
            return slot
        if slot is not None:
            self.release(spec.uid)
        slot = PodSlot(spec, netns)
        self._slots[spec.uid] = slot
        self._nursery.start_soon(self._keep_captured, slot)
        return slot

    def release(self, uid: str, pod_uid: str | None = None) -> PodSlot | None:
        """Let the pod ``uid`` go (only if it is Kubernetes' ``pod_uid``, when given): its
        listeners close and its connections end. Returns its slot (``done`` is set once
        released), or None if there is no such pod."""
        slot = self._slots.get(uid)
        if slot is None or (pod_uid is not None and slot.spec.pod_uid != pod_uid):
            return None
        del self._slots[uid]
        slot.scope.cancel()
        return slot

    def pods_complete(self) -> None:
        """Every pod of the node has been handed over (socket source): readiness may come."""
        self.pods_known = True

    def pods(self) -> dict[str, PodSpec]:
        """Every pod captured or being set up, by key."""
        return {uid: slot.spec for uid, slot in self._slots.items()}

    def _current(self) -> MeshSnapshot:
        # Pods handed over before the first config: no workload yet, connections refused.
        return self.snapshot if self.snapshot is not None else MeshSnapshot(0)

    def _certificate(self, identity: SpiffeId) -> WorkloadCertificate:
        cert = self._certs.get(identity)
        if cert is None:
            raise RuntimeError(f"no certificate for {identity} yet")
        return cert

    async def _keep_captured(self, slot: PodSlot) -> None:
        """Serve the pod, retrying setup failures with backoff, until released.

        Only the failures setup can meet are retried (namespace gone, port taken,
        CA unreachable or refusing); anything else is a bug and ends ztunnel with
        its traceback."""
        next_delay = SETUP_RETRY.delays()
        try:
            with slot.scope:
                while not self.draining:
                    try:
                        await self._capture(slot)
                        return
                    except (NetnsError, OSError, CertificateRequestError) as exc:
                        slot.captured = False
                        slot.error = str(exc)
                        slot.refused = isinstance(exc, CaRefused)
                        slot.notify()
                        log.warning("pod_capture_failed", pod=slot.spec.uid, reason=str(exc))
                    await trio.sleep(next_delay())
        finally:
            if slot.netns is not None:
                slot.netns.close()
            slot.done.set()
            slot.notify()

    async def drain(self, seconds: float) -> None:
        """Shut down without losing what can finish: readiness turns false at once; every
        pod stops accepting and says GOAWAY on its HBONE connections; open connections
        finish by themselves for up to ``seconds``; what is left then is cut (each
        logged once, by its pod). New config is ignored from now on."""
        self.draining = True
        slots = list(self._slots.values())
        open_ = sum(s.pod.open_connections() for s in slots if s.pod is not None)
        log.info("ztunnel_draining", pods=len(slots), connections=open_, seconds=seconds)
        async with trio.open_nursery() as nursery:
            for slot in slots:
                if slot.pod is not None:
                    nursery.start_soon(slot.pod.drain)
                else:
                    slot.scope.cancel()  # not serving yet: nothing to finish
        with trio.move_on_after(seconds) as waited:
            for slot in slots:
                await slot.done.wait()
        left = sum(s.pod.open_connections() for s in slots if s.pod is not None)
        for slot in slots:
            if slot.pod is not None and waited.cancelled_caught:
                slot.pod.cut_at_deadline(seconds)
            slot.scope.cancel()
        for slot in slots:
            await slot.done.wait()
        log.info(
            "ztunnel_drained",
            cut_at_deadline=left if waited.cancelled_caught else 0,
            seconds=seconds,
        )

    def _open_netns(self, slot: PodSlot) -> NetworkNamespace:
        """A handle of its own for one capture attempt."""
        if slot.netns is not None:
            return slot.netns.duplicate()
        workload = self._current().workload(slot.spec.uid)
        name = self._netns_for(workload) if self._netns_for and workload else None
        if name is None:
            raise NetnsError(f"no network namespace known for {slot.spec.uid}")
        return NetworkNamespace.open(name)

    async def _capture(self, slot: PodSlot) -> None:
        spec = slot.spec
        netns = self._open_netns(slot)
        served = False
        try:
            await self._certs.fetch_now(spec.identity)
            async with open_hbone_pool(
                self._certificate, settings=self._settings, dial=netns.dial
            ) as pool:
                pod = CapturedPod(
                    spec.uid,
                    spec.identity,
                    netns,
                    snapshot=self._current,
                    certificate=self._certificate,
                    pool=pool,
                    telemetry=self._telemetry,
                    admission=self.admission,
                    settings=self._settings,
                    dial_timeout=self._dial_timeout,
                    listen_ip=spec.ip if self._listen_on_pod_ip else "0.0.0.0",
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(pod.serve)
                    served = True
                    slot.pod = pod
                    slot.captured = True
                    slot.error = None
                    slot.refused = False
                    slot.notify()
                    log.info(
                        "pod_captured",
                        pod=spec.uid,
                        ip=spec.ip,
                        identity=str(spec.identity),
                        netns=netns.name,
                    )
        finally:
            slot.captured = False
            slot.pod = None
            netns.close()
            if not any(s.spec.identity == spec.identity for s in self._slots.values()):
                self._certs.forget(spec.identity)
            if served:
                log.info("pod_released", pod=spec.uid)
