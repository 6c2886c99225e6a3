"""The waypoint's data path: one HBONE CONNECT from a source ztunnel, end to end.

:meth:`WaypointProxy.handle` takes a CONNECT whose authority is a Service's ``VIP:port``
(or, for a waypoint that takes workload traffic, a pod's ``IP:port``). The Service and
port come from that authority, never from a Host header; a destination not bound to
this waypoint is refused. The protocol is the one the Service port declares, else
sniffed from the first bytes (:mod:`waypoint.protocol`):

- HTTP/1.x (:mod:`waypoint.http_session`) and HTTP/2 with prior knowledge, gRPC
  included (:mod:`waypoint.h2_session`): each request on the connection is handled on
  its own: routed, sent to an endpoint over HBONE as the waypoint, its response relayed
  back, counted and logged;
- anything else (a port declared TCP, or bytes that are not HTTP on a port that
  declares nothing): relayed as bytes to one endpoint, over HBONE as the waypoint.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from mesh.authz import decide_l4
from mesh.hbone import HboneRequest
from mesh.identity import SpiffeId
from mesh.metrics import TcpLabels, parse_baggage
from mesh.model import MeshSnapshot
from mesh.reason import Reason
from mesh.relay import RelayStats, relay
from waypoint.authz import bound_policies
from waypoint.backends import NO_ANSWER, Backends
from waypoint.destination import Caller, Destination
from waypoint.dispatch import Dispatcher
from waypoint.gate import Gate
from waypoint.h2_session import H2Session
from waypoint.http_session import HttpSession
from waypoint.idle import IdleConnections
from waypoint.protocol import SNIFF_BYTES, declared, sniff
from waypoint.request import L7Request, WaypointScope
from waypoint.telemetry import RequestMetrics
from waypoint.upstream import Balancer, H2Upstreams, UpstreamError, Upstreams

log = structlog.get_logger("waypoint")

SNIFF_SECONDS = 5.0  # a client that declares nothing and sends nothing: relayed as TCP


class WaypointProxy:
    """Serves the CONNECTs of the waypoint ``key`` (``namespace/name``)."""

    def __init__(
        self,
        key: str,
        identity: SpiffeId,
        *,
        snapshot: Callable[[], MeshSnapshot | None],
        upstreams: Upstreams,
        metrics: RequestMetrics,
        h2: H2Upstreams,
        balancer: Balancer | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.key = key
        self.identity = identity
        self.snapshot = snapshot
        self.upstreams = upstreams
        self.h2 = h2
        self.tasks = h2.nursery  # fire-and-forget work (mirrored requests)
        self.idle = IdleConnections(self.tasks)  # keep-alive connections awaiting a request
        self.metrics = metrics
        self.balancer = balancer or Balancer()
        self.backends = Backends(self.balancer)  # per Service: DestinationRule, budget
        self.dispatcher = dispatcher or Dispatcher(Gate(WaypointScope(key)))
        self.open_connections = 0

    def destination(self, snapshot: MeshSnapshot, ip: str, port: int) -> Destination | str:
        """The destination of ``ip:port``, or why this waypoint does not serve it."""
        service = snapshot.service_by_vip(ip)
        if service is not None:
            if service.waypoint != self.key:
                return f"service {service.key} is not bound to waypoint {self.key}"
            if service.port(port) is None:
                return f"service {service.key} has no port {port}"
            return Destination(ip, port, service, None)
        workload = snapshot.workload_by_ip(ip)
        if workload is not None and workload.waypoint == self.key:
            return Destination(ip, port, None, workload)
        return f"{ip}:{port} is neither a service nor a pod bound to waypoint {self.key}"

    def caller(self, snapshot: MeshSnapshot, request: HboneRequest) -> Caller:
        """The source as the CONNECT tells it: the ``forwarded`` address counts only when
        the pod there holds the identity the peer proved."""
        forwarded = _forwarded_for(request.header("forwarded"))
        peer_address = request.connection.peer_address
        address = forwarded or (peer_address[0] if peer_address else "")
        workload = snapshot.workload_by_ip(address) if address else None
        if workload is not None and workload.identity != request.peer:
            workload = None
        return Caller(request.peer, workload, address, parse_baggage(request.header("baggage")))

    async def handle(self, request: HboneRequest) -> None:
        snapshot = self.snapshot()
        if snapshot is None:
            log.warning("waypoint_refused", reason="no config from the control plane yet")
            await request.reject(Reason.NO_HEALTHY_ENDPOINT)
            return
        ip, port = request.destination()
        destination = self.destination(snapshot, ip, port)
        if isinstance(destination, str):
            log.warning("waypoint_refused", src_identity=str(request.peer), reason=destination)
            await request.reject(Reason.NOT_AUTHORIZED)
            return
        caller = self.caller(snapshot, request)
        stream = await request.accept()
        self.open_connections += 1
        try:
            await self._serve(snapshot, destination, caller, stream)
        finally:
            self.open_connections -= 1
            await stream.aclose()

    async def _serve(
        self,
        snapshot: MeshSnapshot,
        destination: Destination,
        caller: Caller,
        stream: trio.abc.HalfCloseableStream,
    ) -> None:
        service_port = destination.service.port(destination.port) if destination.service else None
        if declared(service_port) == "tcp":
            await self._relay_tcp(snapshot, destination, caller, stream, b"")
            return
        # Any HTTP port takes HTTP/1.1 and h2c with prior knowledge; an undeclared one
        # anything, relayed as TCP when it is not HTTP.
        first, sniffed = await _sniff(stream)
        if sniffed == "tcp" and declared(service_port) in ("http", "http2", "grpc"):
            sniffed = "http1"  # the port says HTTP: what is not gets 400, never relayed past policy
        if sniffed == "h2":
            await H2Session(self, snapshot, destination, caller, stream, initial=first).run()
        elif sniffed == "http1":
            await HttpSession(self, snapshot, destination, caller, stream, initial=first).run()
        else:
            await self._relay_tcp(snapshot, destination, caller, stream, first)

    async def _relay_tcp(
        self,
        snapshot: MeshSnapshot,
        destination: Destination,
        caller: Caller,
        stream: trio.abc.HalfCloseableStream,
        first: bytes,
    ) -> None:
        if not self._tcp_allowed(snapshot, destination, caller):
            return  # the stream closes: the client sees its connection end, as at ztunnel
        targets = destination.targets(snapshot)
        backend = self.backends.of(snapshot, destination.service)  # its DestinationRule's
        target = backend.pick(targets)
        if target is None:
            log.warning("waypoint_no_endpoint", dst=f"{destination.ip}:{destination.port}",
                        src_identity=str(caller.identity))  # fmt: skip
            return
        try:
            upstream = await self.upstreams.checkout(target, ())
        except UpstreamError as exc:
            log.warning("waypoint_upstream_failed", dst=target.authority, reason=str(exc))
            backend.connect_failed(target, len(targets))
            return
        started = backend.started(target)
        labels = TcpLabels.of(
            "waypoint", source=caller.workload, source_identity=caller.identity,
            destination=snapshot.workload(target.uid), destination_identity=target.identity,
            service=destination.service, security_policy="mutual_tls",
        )  # fmt: skip
        series = self.metrics.tcp.series(labels)
        series.opened.inc()
        stats = RelayStats()
        try:
            if first:
                await upstream.stream.send_all(first)
                stats.sent += len(first)
            await relay(stream, upstream.stream, stats)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("waypoint_tcp_broken", dst=target.authority, reason=str(exc))
        finally:
            backend.finished(target, NO_ANSWER, started, len(targets))
            series.add_bytes(sent=stats.received, received=stats.sent)
            series.closed.inc()
            await upstream.aclose()

    def _tcp_allowed(
        self, snapshot: MeshSnapshot, destination: Destination, caller: Caller
    ) -> bool:
        """AuthorizationPolicy for traffic that is not HTTP: the policies binding this
        waypoint, on their L4 part, with Istio's rule for L7 fields (an ALLOW rule naming
        any never matches; a DENY rule applies on its L4 part alone)."""
        gate = self.dispatcher.gate
        if not gate.binds(snapshot):
            return True
        service = destination.service.key if destination.service is not None else None
        view = L7Request(gate.scope, caller.identity, caller.address, service,
                         destination.port, "", "", "")  # fmt: skip
        bound = [policy for policy, _ in bound_policies(view, snapshot.authorizations)]
        target = service or f"{destination.ip}:{destination.port}"
        decision = decide_l4(bound, caller.identity, caller.address, destination.port, target,
                             enforcer="the waypoint")  # fmt: skip
        if not decision.allowed:
            log.info("connection_denied", src_identity=str(caller.identity), dst=target,
                     policy=decision.policy, reason=decision.reason)  # fmt: skip
        return decision.allowed


async def _sniff(stream: trio.abc.ReceiveStream) -> tuple[bytes, str]:
    """The first bytes of ``stream`` and what they begin (``tcp`` when the client is silent
    for :data:`SNIFF_SECONDS` or closes)."""
    first = b""
    with trio.move_on_after(SNIFF_SECONDS):
        while (kind := sniff(first)) is None:
            data = await stream.receive_some(SNIFF_BYTES)
            if not data:
                break
            first += data
        else:
            return first, kind
    return first, "tcp"


def _forwarded_for(value: str | None) -> str | None:
    """The ``for=`` address of a ``forwarded`` header (RFC 7239), as ztunnel sends it."""
    if not value:
        return None
    for part in value.split(";"):
        key, _, address = part.strip().partition("=")
        if key.lower() == "for" and address:
            address = address.strip('"')
            if address.startswith("["):
                address = address[1:].partition("]")[0]
            return address
    return None
