"""Where one request goes, decided before any byte of it leaves: the gate (JWT, then
AuthorizationPolicy) and then the route table (HTTPRoute / GRPCRoute of the destination
Service and port). Both HTTP sessions ask :meth:`Dispatcher.plan` and carry out what it
returns: a :class:`Plan` (the endpoints of the chosen backend, the request as filters
left it, the response header changes, timeouts, mirrors) or a local reply
(:mod:`waypoint.replies`: a denial, a redirect, no route...).

The route table is compiled once per snapshot. Traffic addressed to a pod gets no
Service's routes (Gateway API's MeshFrontend); a Service with no route goes to its own
endpoints.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from mesh.model import MeshSnapshot, Service
from mesh.model_l7 import GrpcRetry, Retry
from mesh.response_flags import ResponseFlag
from waypoint.decisions import Forward, LocalReply, MirrorTarget, NoRoutes, RedirectTo
from waypoint.destination import Caller, Destination
from waypoint.extensions import Effects, Extensions
from waypoint.gate import Gate, Passed
from waypoint.http_request import Headers, HttpRequest
from waypoint.protocol import declared
from waypoint.replies import LocalReply as Reply
from waypoint.replies import local_reply, no_healthy_upstream, no_route
from waypoint.request import L7Request
from waypoint.routes import RouteTable, compile_snapshot
from waypoint.upstream import Target

Speak: TypeAlias = Literal["http1", "h2"] | None


@dataclass(frozen=True)
class Plan:
    """Send ``request`` to one of ``targets`` (endpoints of ``service``'s ``port``)."""

    request: HttpRequest
    targets: list[Target]
    service: Service | None
    forward: Forward | None = None  # the route rule that chose it; None: no route applies
    mirrors: tuple[MirrorTarget, ...] = ()
    rewritten: bool = False  # ``request`` differs from what the client sent
    speak: Speak = None  # what the app's port declares; None: what the client spoke
    delay: float = 0.0  # seconds to wait before it leaves (a FaultInjection's delay)
    flag: str = ""  # set by a filter although the request goes on (``DI``)

    def response_headers(self, headers: Headers) -> Headers:
        return self.forward.response_headers(headers) if self.forward is not None else headers

    @property
    def changes_response(self) -> bool:
        """Whether the rule's filters change the response's headers (else it goes as is)."""
        forward = self.forward
        return forward is not None and bool(forward.response_modifiers or forward.cors_headers)

    @property
    def retry(self) -> Retry | GrpcRetry | None:
        """The rule's retry on status codes; None without one."""
        return self.forward.rule.retry if self.forward is not None else None

    @property
    def timeout(self) -> float | None:
        """How long the request may take, in seconds, or None: the route's
        ``timeouts.request`` or ``timeouts.backendRequest``, the shorter (0 disables one).
        A retry happens only before any byte left, at once, so the attempt to the backend
        and the request share one deadline."""
        if self.forward is None:
            return None
        given = [ms for ms in (self.forward.timeout_ms, self.forward.backend_timeout_ms) if ms]
        return min(given) / 1000 if given else None


class Dispatcher:
    def __init__(self, gate: Gate, rng: random.Random | None = None) -> None:
        self.gate = gate
        rng = rng or random.Random()
        self._choose: Callable[[int], int] = rng.randrange
        self.extensions = Extensions(rng)
        self._table: tuple[MeshSnapshot, RouteTable] | None = None
        self._targets: tuple[MeshSnapshot, dict[tuple[str, int], list[Target]]] | None = None
        self._speaks: tuple[MeshSnapshot, dict[tuple[str, int], Speak]] | None = None

    def table(self, snapshot: MeshSnapshot) -> RouteTable:
        if self._table is None or self._table[0] is not snapshot:
            self._table = (snapshot, compile_snapshot(snapshot))
        return self._table[1]

    def targets(self, snapshot: MeshSnapshot, destination: Destination) -> list[Target]:
        """``destination.targets(snapshot)``, made once per snapshot and destination."""
        if self._targets is None or self._targets[0] is not snapshot:
            self._targets = (snapshot, {})
        cache = self._targets[1]
        key = (destination.service.key if destination.service else destination.ip,
               destination.port)  # fmt: skip
        found = cache.get(key)
        if found is None:
            found = cache[key] = destination.targets(snapshot)
        return found

    def speak(self, snapshot: MeshSnapshot, service: Service, port: int) -> Speak:
        """:func:`_speak`, found once per snapshot, Service and port."""
        if self._speaks is None or self._speaks[0] is not snapshot:
            self._speaks = (snapshot, {})
        cache = self._speaks[1]
        key = (service.key, port)
        if key in cache:
            return cache[key]
        speak = cache[key] = _speak(service, port)
        return speak

    def plan(
        self,
        snapshot: MeshSnapshot,
        destination: Destination,
        caller: Caller,
        request: HttpRequest,
        *,
        grpc: bool,
        request_id: str = "",
    ) -> Plan | Reply:
        """Where ``request`` goes, or the reply refusing it (``request_id`` names it in the
        gate's log lines, as in its access line)."""
        service = destination.service
        rewritten = False
        if self.gate.binds(snapshot):  # else no policy to ask: the request passes as it is
            policy_view = L7Request(
                self.gate.scope, caller.identity, caller.address,
                service.key if service is not None else None, destination.port,
                request.method, request.path, request.authority, request.headers,
            )  # fmt: skip
            passed = self.gate.check(snapshot, policy_view, request.headers, grpc=grpc,
                                     request_id=request_id)  # fmt: skip
            if not isinstance(passed, Passed):
                return passed
            rewritten = passed.headers != list(request.headers)  # JWT outputs, a dropped token
            if rewritten:
                request = HttpRequest(request.method, request.path, request.authority,
                                      tuple(passed.headers), request.scheme)  # fmt: skip
        if service is None:  # addressed to a pod: no Service's routes
            return Plan(request, self.targets(snapshot, destination), None, rewritten=rewritten)
        speak = self.speak(snapshot, service, destination.port)
        decision = self.table(snapshot).match(
            service.key, destination.port, request,
            source_namespace=caller.identity.namespace, choose=self._choose,
        )  # fmt: skip
        if isinstance(decision, NoRoutes):
            targets = self.targets(snapshot, destination)
            return Plan(request, targets, service, rewritten=rewritten, speak=speak)
        if isinstance(decision, RedirectTo):
            return local_reply(decision.status, "", grpc=grpc,
                               headers=[("location", decision.location)])  # fmt: skip
        if isinstance(decision, LocalReply):
            return _reply(decision, grpc)
        backend = snapshot.service(decision.backend.service)
        if backend is None:
            return local_reply(500, "backend not found", grpc=grpc, details="backend_not_found")
        targets = self.targets(snapshot, Destination(backend.vip, decision.backend.port, backend,
                                                     None))  # fmt: skip
        speak = self.speak(snapshot, backend, decision.backend.port)
        # Sent as the client sent it unless a filter (or a JWT output) changed it.
        rewritten = rewritten or decision.request is not request
        refs = decision.rule.filters.extensions + decision.backend.filters.extensions
        if not refs:
            return Plan(decision.request, targets, backend, decision, decision.mirrors,
                        rewritten, speak)  # fmt: skip
        effects = self.extensions.apply(snapshot, decision.rule, refs, caller.identity, grpc=grpc)
        if not isinstance(effects, Effects):
            return effects
        return Plan(decision.request, targets, backend, decision, decision.mirrors, rewritten,
                    speak, effects.delay, effects.flag)  # fmt: skip


def _speak(service: Service, port: int) -> Speak:
    """The HTTP version the app behind ``service``'s ``port`` speaks, if it says."""
    protocol = declared(service.port(port))
    return "h2" if protocol in ("http2", "grpc") else "http1" if protocol == "http" else None


def _reply(decision: LocalReply, grpc: bool) -> Reply:
    if decision.flag == "NR":
        return no_route(grpc=grpc)
    if decision.flag == "UH":
        return no_healthy_upstream(grpc=grpc)
    flag = ResponseFlag(decision.flag) if decision.flag != "-" else ResponseFlag.NONE
    body = "" if decision.status < 400 else decision.reason.replace("_", " ")
    return local_reply(decision.status, body, grpc=grpc, flag=flag, details=decision.reason,
                       headers=decision.headers)  # fmt: skip
