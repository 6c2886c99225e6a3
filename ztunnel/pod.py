"""One captured pod: its three listeners inside the pod's network namespace,
and what happens to each connection.

- 15001 outbound: the app's own connections, REDIRECTed here. Plan with
  :func:`ztunnel.plan.plan_outbound`, then a CONNECT stream over the pod's
  HBONE pool (presenting the pod's certificate) or plain passthrough.
- 15008 inbound HBONE: the peer's SPIFFE identity was verified by the HBONE
  server; L4 policy decides; the app is dialled from inside the pod.
- 15006 inbound plaintext: a non-mesh client. Refused when PeerAuthentication
  is STRICT; otherwise policy decides (there is no identity to match).

Every socket ztunnel makes here carries ``SO_MARK 0x539``, so the capture
rules never catch ztunnel itself. Inbound connections are remembered with
their cancel scope, so a policy change can close the ones it no longer allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

import structlog
import trio

from mesh.capture import original_dst
from mesh.constants import HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_CAPTURE_PORT
from mesh.hbone import HboneError, HboneRequest, HboneSettings, HboneStreamRefused
from mesh.hbone.client import HboneClientPool, HboneConnectError
from mesh.hbone.server import serve_hbone
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.model import MeshSnapshot, Service, Workload
from mesh.net import serve_listeners
from mesh.netns import NetworkNamespace
from mesh.reason import Failure, Reason, reason_for_dial_error
from mesh.relay import RelayStats, relay
from ztunnel.authz import Connection, Decision, evaluate, peer_auth_mode
from ztunnel.plan import PlanError, plan_outbound

log = structlog.get_logger("ztunnel")

Direction = Literal["inbound", "outbound"]


@dataclass
class ConnectionRecord:
    """Who talked to whom, for metrics, the access log and policy re-checks."""

    direction: Direction
    src_addr: tuple[str, int]
    dst_addr: tuple[str, int]
    src_workload: Workload | None = None
    src_identity: SpiffeId | None = None
    dst_workload: Workload | None = None
    dst_service: Service | None = None
    mtls: bool = False
    started: float = field(default_factory=time.monotonic)
    stats: RelayStats = field(default_factory=RelayStats)


class Telemetry(Protocol):
    def opened(self, record: ConnectionRecord) -> None: ...
    def closed(self, record: ConnectionRecord, failure: Failure | None) -> None: ...
    def denied(self, record: ConnectionRecord, failure: Failure) -> None: ...


@dataclass(eq=False)
class _Active:
    record: ConnectionRecord
    scope: trio.CancelScope
    closed_by_policy: str | None = None


class CapturedPod:
    """Listeners and connection handling for one meshed pod on this node."""

    def __init__(
        self,
        workload: Workload,
        netns: NetworkNamespace,
        *,
        snapshot: Callable[[], MeshSnapshot],
        certificate: Callable[[SpiffeId], WorkloadCertificate],
        pool: HboneClientPool,
        telemetry: Telemetry,
        settings: HboneSettings,
    ) -> None:
        self.workload = workload
        self.netns = netns
        self._snapshot = snapshot
        self._certificate = certificate
        self.pool = pool
        self._telemetry = telemetry
        self._settings = settings
        self._inbound: set[_Active] = set()

    # ---- lifecycle --------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the three listeners in the pod's netns; ``started`` once all listen.

        Each connection runs behind :func:`mesh.net.serve_listeners`' boundary: one that
        fails is logged and closed alone, and the pod's listeners keep serving."""
        listeners: list[trio.socket.SocketType] = []
        try:
            for port in (OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT):
                listeners.append(await self.netns.listen(port))
        except BaseException:
            for sock in listeners:
                sock.close()
            raise
        outbound, plaintext, hbone = listeners
        identity = self.workload.identity
        pod = self.workload.uid
        async with trio.open_nursery() as handlers:
            await handlers.start(
                partial(
                    serve_listeners,
                    self._outbound,
                    [outbound],
                    handler_nursery=handlers,
                    name=f"{pod} outbound",
                )
            )
            await handlers.start(
                partial(
                    serve_listeners,
                    self._inbound_plaintext,
                    [plaintext],
                    handler_nursery=handlers,
                    name=f"{pod} inbound",
                )
            )
            await handlers.start(partial(serve_hbone, self._inbound_hbone,
                                         certificate=lambda: self._certificate(identity),
                                         listener=hbone, settings=self._settings,
                                         handler_nursery=handlers))  # fmt: skip
            task_status.started()

    def recheck_policies(self) -> None:
        """Close inbound connections the current policies no longer allow."""
        for active in list(self._inbound):
            decision = self._decide(active.record)
            if not decision.allowed and active.closed_by_policy is None:
                active.closed_by_policy = decision.reason
                active.scope.cancel()

    # ---- inbound ------------------------------------------------------------------

    def _service_of(self, snapshot: MeshSnapshot, port: int) -> Service | None:
        """The Service this pod serves ``port`` for (what inbound metrics report)."""
        uid = self.workload.uid
        for service in snapshot.services:
            for endpoint in service.endpoints:
                if endpoint.workload_uid == uid and any(t == port for _, t in endpoint.ports):
                    return service
        return None

    def _decide(self, record: ConnectionRecord) -> Decision:
        snapshot = self._snapshot()
        conn = Connection(
            src_ip=record.src_addr[0],
            src_identity=record.src_identity,
            dst_workload=self.workload,
            dst_port=record.dst_addr[1],
        )
        return evaluate(conn, snapshot.policies_for(self.workload))

    async def _inbound_hbone(self, request: HboneRequest) -> None:
        try:
            dst = request.destination()
        except ValueError as exc:
            log.warning("hbone_bad_request", pod=self.workload.uid, reason=str(exc))
            await request.reject(Reason.BAD_REQUEST)
            return
        if dst[0] != self.workload.ip:
            log.warning(
                "hbone_bad_request",
                pod=self.workload.uid,
                reason=f"{dst[0]} is not {self.workload.uid} ({self.workload.ip})",
            )
            await request.reject(Reason.BAD_REQUEST)
            return
        peer_addr = request.connection.peer_address or ("0.0.0.0", 0)
        snapshot = self._snapshot()
        record = ConnectionRecord(
            "inbound",
            src_addr=peer_addr,
            dst_addr=dst,
            src_workload=snapshot.workload_by_ip(peer_addr[0]),
            src_identity=request.peer,
            dst_workload=self.workload,
            dst_service=self._service_of(snapshot, dst[1]),
            mtls=True,
        )
        decision = self._decide(record)
        if not decision.allowed:
            self._telemetry.denied(record, Failure(Reason.POLICY_DENIED, decision.reason))
            await request.reject(Reason.POLICY_DENIED)
            return
        try:
            app = await self.netns.dial(dst, source_ip=peer_addr[0])
        except OSError as exc:
            failure = Failure(
                reason_for_dial_error(exc), f"app at {dst[0]}:{dst[1]}: {exc.strerror or exc}"
            )
            self._telemetry.denied(record, failure)
            await request.reject(failure.reason)
            return
        stream = await request.accept()
        await self._relay_inbound(record, trio.SocketStream(app), stream)

    async def _inbound_plaintext(self, client: trio.SocketStream) -> None:
        async with client:
            if (caught := _caught(client)) is None:
                return
            peer, dst = caught
            snapshot = self._snapshot()
            record = ConnectionRecord(
                "inbound",
                src_addr=peer,
                dst_addr=dst,
                src_workload=snapshot.workload_by_ip(peer[0]),
                dst_workload=self.workload,
                dst_service=self._service_of(snapshot, dst[1]),
            )
            if peer_auth_mode(snapshot, self.workload) == "STRICT":
                self._telemetry.denied(
                    record,
                    Failure(
                        Reason.STRICT_PLAINTEXT,
                        "PeerAuthentication STRICT: plaintext connections are refused",
                    ),
                )
                return
            decision = self._decide(record)
            if not decision.allowed:
                self._telemetry.denied(record, Failure(Reason.POLICY_DENIED, decision.reason))
                return
            try:
                app = await self.netns.dial(dst, source_ip=peer[0])
            except OSError as exc:
                self._telemetry.denied(
                    record,
                    Failure(
                        reason_for_dial_error(exc),
                        f"app at {dst[0]}:{dst[1]}: {exc.strerror or exc}",
                    ),
                )
                return
            await self._relay_inbound(record, trio.SocketStream(app), client)

    async def _relay_inbound(
        self, record: ConnectionRecord, app: trio.SocketStream, peer: trio.abc.HalfCloseableStream
    ) -> None:
        active = _Active(record, trio.CancelScope())
        self._inbound.add(active)
        self._telemetry.opened(record)
        failure: Failure | None = None
        try:
            with active.scope:
                async with app, peer:
                    await relay(peer, app, record.stats)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            failure = Failure(Reason.CONNECTION_RESET, str(exc) or type(exc).__name__)
        finally:
            self._inbound.discard(active)
            if active.closed_by_policy is not None:
                failure = Failure(
                    Reason.POLICY_DENIED, f"closed by policy: {active.closed_by_policy}"
                )
            self._telemetry.closed(record, failure)

    # ---- outbound -----------------------------------------------------------------

    async def _outbound(self, client: trio.SocketStream) -> None:
        async with client:
            if (caught := _caught(client)) is None:
                return
            peer, dst = caught
            record = ConnectionRecord(
                "outbound",
                src_addr=peer,
                dst_addr=dst,
                src_workload=self.workload,
                src_identity=self.workload.identity,
            )
            snapshot = self._snapshot()
            try:
                plan = plan_outbound(snapshot, self.workload, dst[0], dst[1])
            except PlanError as exc:
                self._telemetry.denied(record, Failure(Reason.NO_HEALTHY_ENDPOINT, str(exc)))
                return
            record.dst_workload = plan.dst_workload
            record.dst_service = plan.service
            upstream: trio.abc.HalfCloseableStream
            try:
                if plan.kind == "hbone":
                    assert plan.authority is not None
                    assert plan.expected_identity is not None
                    record.mtls = True
                    upstream = await self.pool.connect(
                        source=self.workload.identity,
                        address=plan.dial,
                        authority=plan.authority,
                        expected=[plan.expected_identity],
                        source_address=self.workload.ip,
                    )
                else:
                    upstream = trio.SocketStream(await self.netns.dial(plan.dial))
            except HboneStreamRefused as exc:
                reason = exc.reason or Reason.DESTINATION_REFUSED
                self._telemetry.denied(record, Failure(reason, str(exc)))
                return
            except HboneConnectError as exc:
                self._telemetry.denied(record, Failure(exc.reason, str(exc)))
                return
            except HboneError as exc:
                self._telemetry.denied(record, Failure(Reason.CONNECTION_RESET, str(exc)))
                return
            except OSError as exc:
                self._telemetry.denied(record, Failure(reason_for_dial_error(exc), str(exc)))
                return
            self._telemetry.opened(record)
            failure: Failure | None = None
            try:
                async with upstream:
                    await relay(client, upstream, record.stats)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failure = Failure(Reason.CONNECTION_RESET, str(exc) or type(exc).__name__)
            finally:
                self._telemetry.closed(record, failure)


def _caught(client: trio.SocketStream) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(peer, original destination) of a REDIRECTed connection; None if it is already gone."""
    try:
        dst = original_dst(client.socket)
        peer = client.socket.getpeername()
    except OSError:
        return None
    return (peer[0], peer[1]), dst
