"""The node proxy: keeps every meshed pod on this node captured, as the mesh
model says, and reports what it is doing.

On each new :class:`~mesh.model.MeshSnapshot` (from the config stream) it
serves pods that appeared (certificate first, then the listeners in the pod's
network namespace), releases pods that left or changed, and re-checks the
policy of every open inbound connection. Pods are set up in the background: a
slow CA never holds up the config stream.

ztunnel never runs iptables: the capture rules in each pod belong to the
node-level part that outlives it (:mod:`mesh.capture`; the local cluster in
local mode). While ztunnel is down or a pod's listeners are not up yet, the
pod's traffic meets closed ports and is refused: capture fails closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
import trio

from mesh.backoff import Backoff
from mesh.ca_client import CertificateRequestError
from mesh.certs import CertificateManager
from mesh.hbone import HboneSettings
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.model import MeshSnapshot, Workload
from mesh.netns import NetnsError, NetworkNamespace
from mesh.pending import PendingLimits
from mesh.record import Telemetry
from ztunnel.admission import Admission
from ztunnel.pod import CapturedPod

log = structlog.get_logger("ztunnel")

SETUP_RETRY = Backoff(initial=0.2, maximum=10.0)
DIAL_TIMEOUT = 10.0  # to an app, or a passthrough destination: a dropped SYN waits ~2 min


@dataclass(eq=False)
class _PodSlot:
    workload: Workload
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    captured: bool = False
    error: str | None = None
    pod: CapturedPod | None = None
    done: trio.Event = field(default_factory=trio.Event)  # its task has ended


class Ztunnel:
    def __init__(
        self,
        *,
        node: str,
        certificates: CertificateManager,
        netns_for: Callable[[Workload], str | None],
        telemetry: Telemetry,
        settings: HboneSettings | None = None,
        dial_timeout: float = DIAL_TIMEOUT,
        limits: PendingLimits | None = None,
        listen_on_pod_ip: bool = False,
    ) -> None:
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
        self._slots: dict[str, _PodSlot] = {}
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
        waiting = [s.workload.uid for s in self._slots.values() if not s.captured]
        if waiting:
            return False, "pods not captured yet: " + ", ".join(sorted(waiting))
        return True, f"{len(self._slots)} pods captured"

    def status(self) -> dict[str, Any]:
        """What /config_dump shows: the config version, each pod's state (and locality:
        its node's region and zone), and the connections pending or half-closed now (with
        the limits and what was shed)."""
        pods = []
        for slot in sorted(self._slots.values(), key=lambda s: s.workload.uid):
            cert = self._certs.get(slot.workload.identity)
            pods.append(
                {
                    "uid": slot.workload.uid,
                    "ip": slot.workload.ip,
                    "identity": str(slot.workload.identity),
                    "locality": locality.to_json()
                    if (locality := slot.workload.locality)
                    else None,
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
        """Apply a new snapshot: capture, release, re-check policies."""
        assert self._nursery is not None, "run() must be started first"
        if self.draining:
            return  # shutting down: the pods are being let go
        self.snapshot = snapshot
        # A native-tunnel pod (a waypoint) speaks HBONE itself: never captured here.
        wanted = {
            w.uid: w
            for w in snapshot.workloads_on_node(self.node)
            if w.meshed and not w.native_tunnel
        }
        for uid, slot in list(self._slots.items()):
            new = wanted.get(uid)
            if new is None or self._capture_key(new) != self._capture_key(slot.workload):
                del self._slots[uid]
                slot.scope.cancel()
            else:  # labels, ports...: looked up per connection, no recapture
                slot.workload = new
        for uid, workload in wanted.items():
            if uid not in self._slots:
                slot = _PodSlot(workload)
                self._slots[uid] = slot
                self._nursery.start_soon(self._keep_captured, slot)
        for slot in self._slots.values():
            if slot.pod is not None:
                slot.pod.recheck_policies()
        await trio.lowlevel.checkpoint()

    def _capture_key(self, workload: Workload) -> tuple[str, SpiffeId, str | None]:
        """What a capture is bound to; only a change of it captures the pod again."""
        return (workload.ip, workload.identity, self._netns_for(workload))

    def _current(self) -> MeshSnapshot:
        assert self.snapshot is not None
        return self.snapshot

    def _certificate(self, identity: SpiffeId) -> WorkloadCertificate:
        cert = self._certs.get(identity)
        if cert is None:
            raise RuntimeError(f"no certificate for {identity} yet")
        return cert

    async def _keep_captured(self, slot: _PodSlot) -> None:
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
                        log.warning("pod_capture_failed", pod=slot.workload.uid, reason=str(exc))
                    await trio.sleep(next_delay())
        finally:
            slot.done.set()

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

    async def _capture(self, slot: _PodSlot) -> None:
        workload = slot.workload
        name = self._netns_for(workload)
        if name is None:
            raise NetnsError(f"no network namespace known for {workload.uid}")
        netns = NetworkNamespace.open(name)
        served = False
        try:
            await self._certs.fetch_now(workload.identity)
            async with open_hbone_pool(
                self._certificate, settings=self._settings, dial=netns.dial
            ) as pool:
                pod = CapturedPod(
                    workload.uid,
                    workload.identity,
                    netns,
                    snapshot=self._current,
                    certificate=self._certificate,
                    pool=pool,
                    telemetry=self._telemetry,
                    admission=self.admission,
                    settings=self._settings,
                    dial_timeout=self._dial_timeout,
                    listen_ip=workload.ip if self._listen_on_pod_ip else "0.0.0.0",
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(pod.serve)
                    served = True
                    slot.pod = pod
                    slot.captured = True
                    slot.error = None
                    log.info(
                        "pod_captured",
                        pod=workload.uid,
                        ip=workload.ip,
                        identity=str(workload.identity),
                        netns=name,
                    )
        finally:
            slot.captured = False
            slot.pod = None
            netns.close()
            if not any(s.workload.identity == workload.identity for s in self._slots.values()):
                self._certs.forget(workload.identity)
            if served:
                log.info("pod_released", pod=workload.uid)
