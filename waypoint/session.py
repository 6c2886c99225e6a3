"""What a downstream session (:mod:`waypoint.http_session`, :mod:`waypoint.h2_session`)
needs of the waypoint, and what both kinds share.

:class:`Shared` is the narrow interface a session sees of the waypoint
(:class:`waypoint.proxy.WaypointProxy` provides it): its identity, the current snapshot,
the upstream connections, the balancer, each backend Service's state, the dispatcher,
the metrics, a nursery for fire-and-forget work. :class:`Session` holds one connection's
context and does what both sessions do alike: the headers of a CONNECT to an endpoint,
the ``x-forwarded-client-cert`` value, and a finished request's series and log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot
from mesh.tap import request_event
from waypoint.backends import Backends
from waypoint.destination import Caller, Destination
from waypoint.dispatch import Dispatcher, Plan
from waypoint.idle import IdleConnections
from waypoint.telemetry import Finished, RequestMetrics, account
from waypoint.upstream import Balancer, H2Upstreams, Target, Upstreams

# Envoy's stream_idle_timeout: a request with a body to come that sees no byte either way
# for this long is ended (408 SI before its answer began, a reset after), so a client
# that stalls mid-body cannot hold a session, an upstream stream and an app connection.
STREAM_IDLE_SECONDS = 300.0


class IdleTimer:
    """The stream idle timeout of one request: :meth:`scope` is entered around the
    exchange, :meth:`active` starts the wait again each time a byte moves."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope(deadline=trio.current_time() + STREAM_IDLE_SECONDS)

    def active(self) -> None:
        self.scope.deadline = trio.current_time() + STREAM_IDLE_SECONDS

    @property
    def expired(self) -> bool:
        return self.scope.cancelled_caught


class Shared(Protocol):
    identity: SpiffeId
    snapshot: Callable[[], MeshSnapshot | None]
    upstreams: Upstreams
    h2: H2Upstreams
    balancer: Balancer
    backends: Backends
    dispatcher: Dispatcher
    metrics: RequestMetrics
    tasks: trio.Nursery
    idle: IdleConnections


class Session:
    """One downstream connection: whom it serves (``destination``), for whom (``caller``)."""

    def __init__(
        self, proxy: Shared, snapshot: MeshSnapshot, destination: Destination, caller: Caller
    ) -> None:
        self.proxy = proxy
        self.snapshot = snapshot
        self.destination = destination
        self.caller = caller
        self._xfcc = ""
        self._source: dict[str, str] | None = None  # the caller's labels, once per connection

    def connect_headers(self) -> list[tuple[str, str]]:
        """The headers of a CONNECT to an endpoint: the caller's address, forwarded."""
        return [("forwarded", f"for={self.caller.address}")] if self.caller.address else []

    def xfcc(self) -> str:
        """``x-forwarded-client-cert``: the waypoint, and the caller it verified."""
        if not self._xfcc:
            self._xfcc = f"By={self.proxy.identity};URI={self.caller.identity}"
        return self._xfcc

    def ours(self, request_id: str) -> tuple[tuple[str, str], ...]:
        """The headers the waypoint sets on each request it sends on (to the app, and to a
        mirror): its ``x-request-id`` and ``x-forwarded-client-cert``."""
        return ("x-request-id", request_id), ("x-forwarded-client-cert", self.xfcc())

    def account(self, done: Finished, target: Target | None, plan: Plan | None) -> None:
        """Count ``done`` (sent to ``target`` as ``plan`` said) and log it."""
        service = plan.service if plan is not None and plan.service else self.destination.service
        workload = self.snapshot.workload(target.uid) if target is not None else None
        metrics, caller = self.proxy.metrics, self.caller
        if self._source is None:
            self._source = metrics.side("source", caller.workload, caller.identity, caller.baggage)
        account(
            metrics, done,
            source=self._source,
            destination=metrics.side("destination", workload, target.identity if target else None),
            service=service, upstream_host=target.authority if target else None,
        )  # fmt: skip
        if metrics.tap.active:
            metrics.tap.offer(request_event(
                src_identity=caller.identity, src_workload=caller.workload,
                src_addr=caller.address or None,
                dst_identity=target.identity if target else None,
                dst_workload=workload, dst_service=service,
                dst_addr=target.authority if target else None, started=done.started,
                method=done.method, authority=done.authority, path=done.path,
                protocol=done.protocol, status=done.status, grpc_status=done.grpc_status or None,
                flags=done.flags, bytes_sent=done.response_bytes,
                bytes_received=done.request_bytes,
            ))  # fmt: skip
