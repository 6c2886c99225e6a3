"""Inbound: connections arriving at a captured pod.

- 15008 HBONE: the peer's SPIFFE identity was verified by the HBONE server; the
  CONNECT authority must name this pod; L4 policy decides; the app is dialled
  from inside the pod with the client's own source address.
- 15006 plaintext: a non-mesh client, caught by the pod's PREROUTING rule.
  Refused when PeerAuthentication is STRICT; otherwise policy decides (there is
  no identity to match).

The pod's workload, its policies and its Services are looked up in the current
snapshot for every connection, so a relabelled pod is judged by its new labels
without being captured again. Open connections are remembered with their
cancel scope, so a policy change can close the ones it no longer allows.

Every connection (or CONNECT) is pending work of its source from its arrival
until the app is dialled (:mod:`ztunnel.admission`): past the limit it is
refused at once, as ``overloaded``, before policy is even evaluated.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from mesh.authz import Connection, Decision, evaluate, peer_auth_mode
from mesh.capture import caught
from mesh.constants import CAPTURE_PORTS
from mesh.hbone import HboneError, HboneRequest
from mesh.hbone.client import HboneClientPool, failure_reason
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Workload
from mesh.net import reset_on_close
from mesh.netns import NetworkNamespace
from mesh.reason import Failure, Reason, reason_for_dial_error
from mesh.record import ConnectionRecord, Telemetry
from ztunnel.admission import REFUSED, RELEASED, Active, Admission
from ztunnel.plan import Refused, ViaWaypoint, plan_outbound

log = structlog.get_logger("ztunnel")


class Inbound:
    """The inbound side of one captured pod (``uid``)."""

    def __init__(
        self,
        uid: str,
        netns: NetworkNamespace,
        *,
        snapshot: Callable[[], MeshSnapshot],
        telemetry: Telemetry,
        admission: Admission,
        dial_timeout: float,
        pool: HboneClientPool | None = None,
    ) -> None:
        self.uid = uid
        self._pool = pool  # plaintext to a pod bound to a waypoint goes through it
        self._netns = netns
        self._snapshot = snapshot
        self._telemetry = telemetry
        self._admission = admission
        self._dial_timeout = dial_timeout
        self._open: set[Active] = set()
        self.cut = RELEASED  # why a connection cancelled from outside ends

    def open_connections(self) -> int:
        return len(self._open)

    def recheck_policies(self) -> None:
        """Close open connections the current policies no longer allow."""
        snapshot = self._snapshot()
        for active in list(self._open):
            decision = inbound_decision(snapshot, active.record)
            if not decision.allowed:
                active.cut(Failure(Reason.POLICY_DENIED, f"closed by policy: {decision.reason}"))

    def _record(
        self,
        snapshot: MeshSnapshot,
        workload: Workload,
        peer: tuple[str, int],
        dst: tuple[str, int],
        src_identity: SpiffeId | None = None,
    ) -> ConnectionRecord:
        """The one way an inbound record is made; a proved identity means mutual TLS."""
        return ConnectionRecord(
            "inbound",
            src_addr=peer,
            dst_addr=dst,
            src_workload=snapshot.workload_by_ip(peer[0]),
            src_identity=src_identity,
            dst_workload=workload,
            dst_service=snapshot.service_of_endpoint(workload.uid, dst[1]),
            mtls=src_identity is not None,
        )

    async def hbone(self, request: HboneRequest) -> None:
        """Handle one CONNECT on the pod's 15008."""
        snapshot = self._snapshot()
        workload = snapshot.workload(self.uid)
        try:
            dst = request.destination()
            if workload is None or dst[0] != workload.ip:
                raise ValueError(f"{dst[0]} is not pod {self.uid}")
            if dst[1] in CAPTURE_PORTS:
                raise ValueError(f"port {dst[1]} is ztunnel's own, not the app's")
        except ValueError as exc:
            log.warning("hbone_bad_request", pod=self.uid, reason=str(exc))
            await request.reject(Reason.BAD_REQUEST)
            return
        peer = request.connection.peer_address or ("0.0.0.0", 0)
        record = self._record(snapshot, workload, peer, dst, src_identity=request.peer)
        if not self._admission.admit(peer[0]):
            self._telemetry.denied(record, REFUSED, log=False)
            await request.reject(Reason.OVERLOADED)
            return
        try:
            app = await self._policy_then_dial(snapshot, record)
        finally:
            self._admission.release(peer[0])
        if isinstance(app, Failure):
            self._telemetry.denied(record, app)
            await request.reject(app.reason)
            return
        stream = await request.accept()
        await self._relay(record, trio.SocketStream(app), stream)

    async def plaintext(self, client: trio.SocketStream) -> None:
        """Handle one connection caught on the pod's 15006."""
        async with client:
            if (addresses := caught(client)) is None:
                return
            peer, dst = addresses
            if dst[1] in CAPTURE_PORTS:  # ztunnel's own port, reached from outside: refuse
                log.warning("plaintext_to_proxy_port_refused", pod=self.uid, src=peer[0],
                            port=dst[1])  # fmt: skip
                return
            snapshot = self._snapshot()
            workload = snapshot.workload(self.uid)
            if workload is None:
                return  # the pod is being released
            record = self._record(snapshot, workload, peer, dst)
            if not self._admission.admit(peer[0]):
                reset_on_close(client.socket)
                self._telemetry.denied(record, REFUSED, log=False)
                return
            try:
                if peer_auth_mode(snapshot, workload) == "STRICT":
                    app: trio.abc.HalfCloseableStream | Failure = Failure(
                        Reason.STRICT_PLAINTEXT,
                        "PeerAuthentication STRICT: plaintext connections are refused",
                    )
                elif workload.waypoint is not None and self._pool is not None:
                    app = await self._via_waypoint(snapshot, workload, record)
                else:
                    dialled = await self._policy_then_dial(snapshot, record)
                    app = dialled if isinstance(dialled, Failure) else trio.SocketStream(dialled)
            finally:
                self._admission.release(peer[0])
            if isinstance(app, Failure):
                self._telemetry.denied(record, app)
                return
            await self._relay(record, app, client)

    async def _via_waypoint(
        self, snapshot: MeshSnapshot, workload: Workload, record: ConnectionRecord
    ) -> trio.abc.HalfCloseableStream | Failure:
        """Plaintext to a pod bound to a waypoint goes through the waypoint (as the pod's
        own identity, the client's address forwarded), never straight to the app."""
        assert self._pool is not None
        plan = plan_outbound(snapshot, workload, workload.ip, record.dst_addr[1])
        if isinstance(plan, Refused):
            return Failure(plan.reason, plan.detail)
        if not isinstance(plan, ViaWaypoint):  # the waypoint's own pod: no loop
            dialled = await self._policy_then_dial(snapshot, record)
            return dialled if isinstance(dialled, Failure) else trio.SocketStream(dialled)
        try:
            return await self._pool.connect(
                source=workload.identity, address=plan.dial, authority=plan.authority,
                expected=[plan.expected_identity], source_address=record.src_addr[0],
            )  # fmt: skip
        except HboneError as exc:
            return Failure(failure_reason(exc), str(exc))

    async def _policy_then_dial(
        self, snapshot: MeshSnapshot, record: ConnectionRecord
    ) -> trio.socket.SocketType | Failure:
        """The app's socket if policy allows ``record`` and the dial succeeds, else why not."""
        decision = inbound_decision(snapshot, record)
        if not decision.allowed:
            return Failure(Reason.POLICY_DENIED, decision.reason)
        return await self._dial_app(record)

    async def _dial_app(self, record: ConnectionRecord) -> trio.socket.SocketType | Failure:
        dst = record.dst_addr
        try:
            with trio.fail_after(self._dial_timeout):
                return await self._netns.dial(dst, source_ip=record.src_addr[0])
        except trio.TooSlowError:
            return Failure(
                Reason.TIMEOUT, f"app at {dst[0]}:{dst[1]}: no answer in {self._dial_timeout:g}s"
            )
        except OSError as exc:
            return Failure(
                reason_for_dial_error(exc), f"app at {dst[0]}:{dst[1]}: {exc.strerror or exc}"
            )

    async def _relay(
        self,
        record: ConnectionRecord,
        app: trio.abc.HalfCloseableStream,
        peer: trio.abc.HalfCloseableStream,
    ) -> None:
        active = Active(record)
        self._open.add(active)
        try:
            await self._admission.relay(
                active, peer, app, self._telemetry, cancelled=lambda: self.cut
            )
        finally:
            self._open.discard(active)


def inbound_decision(snapshot: MeshSnapshot, record: ConnectionRecord) -> Decision:
    """L4 policy for ``record``, by the destination workload as the snapshot has it now.

    A pod bound to a waypoint (``waypoint-for: workload`` or ``all``) takes traffic from
    that waypoint; from anyone else only when an ALLOW policy names it, so the waypoint's
    policies cannot be bypassed by dialling the pod."""
    assert record.dst_workload is not None
    workload = snapshot.workload(record.dst_workload.uid) or record.dst_workload
    conn = Connection(
        src_ip=record.src_addr[0],
        src_identity=record.src_identity,
        dst_workload=workload,
        dst_port=record.dst_addr[1],
    )
    decision = evaluate(conn, snapshot.policies_for(workload))
    key = workload.waypoint
    if key is None or not decision.allowed or decision.policy is not None:
        return decision
    if record.src_identity is not None and record.src_identity in waypoint_identities(
        snapshot, key, workload.trust_domain
    ):
        return decision
    return Decision(
        False,
        None,
        f"pod {workload.uid} takes traffic through its waypoint {key} (or as an ALLOW policy"
        " says); this connection did not come from it",
    )


def waypoint_identities(snapshot: MeshSnapshot, key: str, trust_domain: str) -> set[SpiffeId]:
    """The identities the waypoint ``key`` proves: its Gateway's service account, and those
    of the pods behind its Service."""
    namespace, _, name = key.partition("/")
    found = {SpiffeId(trust_domain, namespace, name)}
    service = snapshot.service(key)
    for endpoint in service.endpoints if service is not None else ():
        w = snapshot.workload(endpoint.workload_uid)
        if w is not None:
            found.add(w.identity)
    return found
