"""Outbound: the app's own connections, REDIRECTed to the pod's 15001.

The plan (:func:`ztunnel.plan.plan_outbound`, pure) decides; this module carries
it out: a CONNECT stream over the pod's HBONE pool (presenting the pod's
certificate) straight to the destination pod or to its waypoint, plain TCP
for passthrough, or a refusal with its reason. The source workload is looked up
in the current snapshot for every connection. Each connection is pending work of
its source from its accept until its upstream is open (:mod:`ztunnel.admission`):
past the limit it is reset at once, as ``overloaded``.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from mesh.capture import caught
from mesh.hbone import HboneError
from mesh.hbone.client import HboneClientPool, failure_reason
from mesh.metrics import baggage
from mesh.model import MeshSnapshot
from mesh.net import reset_on_close
from mesh.netns import NetworkNamespace
from mesh.reason import Failure, Reason, reason_for_dial_error
from mesh.record import ConnectionRecord, Telemetry
from ztunnel.admission import REFUSED, RELEASED, Active, Admission
from ztunnel.plan import Direct, Passthrough, Refused, ViaWaypoint, plan_outbound


class Outbound:
    """The outbound side of one captured pod (``uid``)."""

    def __init__(
        self,
        uid: str,
        netns: NetworkNamespace,
        *,
        snapshot: Callable[[], MeshSnapshot],
        pool: HboneClientPool,
        telemetry: Telemetry,
        admission: Admission,
        dial_timeout: float,
    ) -> None:
        self.uid = uid
        self._netns = netns
        self._snapshot = snapshot
        self._pool = pool
        self._telemetry = telemetry
        self._admission = admission
        self._dial_timeout = dial_timeout
        self._relaying = 0
        self.cut = RELEASED  # why a connection cancelled from outside ends

    def open_connections(self) -> int:
        return self._relaying

    async def handle(self, client: trio.SocketStream) -> None:
        async with client:
            if (addresses := caught(client)) is None:
                return
            peer, dst = addresses
            snapshot = self._snapshot()
            source = snapshot.workload(self.uid)
            if source is None:
                return  # the pod is being released
            record = ConnectionRecord(
                "outbound",
                src_addr=peer,
                dst_addr=dst,
                src_workload=source,
                src_identity=source.identity,
            )
            plan = plan_outbound(snapshot, source, dst[0], dst[1])
            record.dst_service = plan.service
            if isinstance(plan, Refused):
                self._telemetry.denied(record, Failure(plan.reason, plan.detail))
                return
            record.dst_workload = (
                plan.waypoint if isinstance(plan, ViaWaypoint) else plan.dst_workload
            )
            record.mtls = not isinstance(plan, Passthrough)
            if not self._admission.admit(peer[0]):
                reset_on_close(client.socket)
                self._telemetry.denied(record, REFUSED, log=False)
                return
            try:
                upstream = await self._open(record, plan, source.ip)
            finally:
                self._admission.release(peer[0])
            if isinstance(upstream, Failure):
                self._telemetry.denied(record, upstream)
                return
            self._relaying += 1
            try:
                await self._admission.relay(
                    Active(record), client, upstream, self._telemetry, cancelled=lambda: self.cut
                )
            finally:
                self._relaying -= 1

    async def _open(
        self, record: ConnectionRecord, plan: Direct | ViaWaypoint | Passthrough, source_ip: str
    ) -> trio.abc.HalfCloseableStream | Failure:
        assert record.src_identity is not None
        if isinstance(plan, Passthrough):
            try:
                with trio.fail_after(self._dial_timeout):
                    return trio.SocketStream(await self._netns.dial(plan.dial))
            except trio.TooSlowError:
                return Failure(Reason.TIMEOUT, f"no answer from {plan.dial[0]}:{plan.dial[1]}")
            except OSError as exc:
                return Failure(reason_for_dial_error(exc), str(exc))
        # A waypoint takes the source's metric labels from the baggage, as Istio's does.
        headers = (
            [("baggage", baggage(record.src_workload))] if isinstance(plan, ViaWaypoint) else []
        )
        try:
            return await self._pool.connect(
                source=record.src_identity,
                address=plan.dial,
                authority=plan.authority,
                expected=[plan.expected_identity],
                source_address=source_ip,
                headers=headers,
            )
        except HboneError as exc:
            return Failure(failure_reason(exc), str(exc))
