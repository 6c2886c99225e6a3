"""The waypoint's route table: HTTPRoutes and GRPCRoutes attached to Services (GAMMA),
compiled once per snapshot into an ordered list of matches per Service port, and the
decision for one request.

**Attachment** (GAMMA) is :mod:`mesh.route_status`'s, the rule the control plane reports
with: a route attaches to a Service through a parentRef of group "" and kind ``Service``
(``port`` or ``sectionName`` scoping it to one port), and applies to every client when in
the Service's namespace (a producer route), else only to clients of its own namespace
(``source_namespace``, the caller's SPIFFE namespace), for which it replaces the producer
routes of that port (GEP-1294); GRPCRoutes win over HTTPRoutes on one port
(``Conflicted``); a route with a regular expression outside :mod:`mesh.route_regex`'s
dialect is left out whole (``UnsupportedValue``). A route's ``hostnames`` are ignored,
as GAMMA asks: the Service is what the client dialled, the CONNECT authority
(:meth:`RouteTable.destination`), never the ``Host`` header; an address that is not a
Service's gets no routes. Gateway parents are not mesh routes and are skipped here.
Every problem is a :class:`RouteProblem` in :attr:`RouteTable.problems`.

**Order.** Every match of every rule is one entry, sorted by its kind's precedence
(:mod:`waypoint.matching`), then the oldest route (creation time; unknown times last),
then ``namespace/name``, then rule order, then match order; the first entry that matches
wins. No entry matches: 404 (``NR``). No route at all: :class:`~waypoint.decisions.NoRoutes`.

A rule with a filter ambit does not apply answers 500.

**Backends.** One backendRef per request, by weight, through an injected ``choose``;
weight 0 is never chosen, all weights 0 (or none) answer 500; a backendRef that does not
resolve answers 500 for its share, one whose Service has no endpoint 503 (``UH``).

Pure: built from model values, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from mesh.model import MeshSnapshot, Service
from mesh.model_l7 import BackendRef, GrpcRoute, HttpRoute, Mirror
from mesh.route_status import PortKey, Route, RouteKey, route_key, route_status
from mesh.route_status import RouteProblem as RouteProblem  # re-exported: the table's report
from waypoint import cors
from waypoint.decisions import (
    FLAG_NO_HEALTHY_UPSTREAM,
    FLAG_NONE,
    NO_ROUTE,
    Backend,
    Decision,
    Forward,
    LocalReply,
    MirrorTarget,
    NoRoutes,
    RedirectTo,
    Rule,
)
from waypoint.filters import Choose, FilterSet, mirrored, redirect_location, rewrite_request
from waypoint.http_request import HttpRequest, split_authority
from waypoint.matching import GrpcMatcher, HttpMatcher

# Precedence, route age, route key, rule index, match index: smaller first.
Order = tuple[tuple[int, ...], tuple[int, float], str, int, int]


@dataclass(frozen=True)
class Entry:
    """One match of one rule, in the table's order."""

    order: Order
    matcher: HttpMatcher | GrpcMatcher
    rule: Rule

    @property
    def prefix(self) -> str:
        """The PathPrefix that matched ("" for other matches): what ReplacePrefixMatch
        replaces."""
        m = self.matcher
        return m.path.value if isinstance(m, HttpMatcher) and m.path.type == "PathPrefix" else ""


@dataclass(frozen=True)
class PortRoutes:
    """The entries of one Service port: the producer routes', and per client namespace
    its consumer routes'."""

    producer: tuple[Entry, ...] = ()
    consumers: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)

    def entries(self, source_namespace: str) -> tuple[Entry, ...]:
        return self.consumers.get(source_namespace) or self.producer


class RouteTable:
    """Every Service port's entries; built by :func:`compile_routes`, never changed."""

    def __init__(
        self,
        ports: Mapping[PortKey, PortRoutes],
        services: Iterable[Service],
        problems: Iterable[RouteProblem] = (),
    ) -> None:
        self._ports = dict(ports)
        self._by_vip = {s.vip: s for s in services if s.vip}
        self.problems = tuple(problems)

    def destination(self, authority: str) -> PortKey | None:
        """The Service and port a CONNECT authority (``VIP:port``) names; None for any
        other address (a pod IP) or a port the Service does not have."""
        host, port = split_authority(authority)
        service = self._by_vip.get(host)
        if service is None or port is None or service.port(port) is None:
            return None
        return service.key, port

    def entries(self, service: str, port: int, source_namespace: str = "") -> tuple[Entry, ...]:
        routes = self._ports.get((service, port))
        return routes.entries(source_namespace) if routes is not None else ()

    def route(
        self,
        authority: str,
        request: HttpRequest,
        *,
        source_namespace: str = "",
        choose: Choose = random.randrange,
    ) -> Decision:
        """The decision for ``request`` sent through a CONNECT to ``authority``."""
        found = self.destination(authority)
        if found is None:
            return NoRoutes(None, split_authority(authority)[1] or 0)
        return self.match(*found, request, source_namespace=source_namespace, choose=choose)

    def match(
        self,
        service: str,
        port: int,
        request: HttpRequest,
        *,
        source_namespace: str = "",
        choose: Choose = random.randrange,
    ) -> Decision:
        """The decision for ``request`` to ``service`` (its key) on ``port``, from a client
        of ``source_namespace`` ("" when unknown: producer routes only)."""
        entries = self.entries(service, port, source_namespace)
        if not entries:
            return NoRoutes(service, port)
        for entry in entries:
            if entry.matcher.matches(request):
                return decide(entry, request, port, choose)
        return NO_ROUTE


def decide(entry: Entry, request: HttpRequest, port: int, choose: Choose) -> Decision:
    """What ``entry``'s rule does with ``request``, which it matched, sent to ``port``."""
    rule, prefix = entry.rule, entry.prefix
    filters = rule.filters
    if filters.cors is not None and cors.is_preflight(request):
        headers = cors.preflight(filters.cors, request)
        return LocalReply(cors.PREFLIGHT_STATUS, FLAG_NONE, "cors_preflight", headers, rule)
    if filters.unsupported:
        return LocalReply(500, FLAG_NONE, "unsupported_filter", rule=rule)
    if filters.redirect is not None:
        location = redirect_location(request, filters.redirect, prefix, port)
        return RedirectTo(filters.redirect.status_code, location, rule)
    backend = choose_backend(rule.backends, choose)
    if backend is None:
        return LocalReply(500, FLAG_NONE, "no_backend", rule=rule)
    if not backend.resolved or backend.filters.unsupported:
        reason = "backend_not_found" if not backend.resolved else "unsupported_filter"
        return LocalReply(500, FLAG_NONE, reason, rule=rule)
    if backend.filters.redirect is not None:
        location = redirect_location(request, backend.filters.redirect, prefix, port)
        return RedirectTo(backend.filters.redirect.status_code, location, rule)
    if not backend.ready:
        return LocalReply(503, FLAG_NO_HEALTHY_UPSTREAM, "no_healthy_endpoint", rule=rule)
    outgoing = rewrite_request(rewrite_request(request, filters, prefix), backend.filters, prefix)
    mirrors = [*_mirrors(filters), *_mirrors(backend.filters)]
    modifiers = (filters.response_headers, backend.filters.response_headers)
    return Forward(
        rule,
        backend,
        outgoing,
        mirrored(mirrors, choose),
        tuple(m for m in modifiers if m is not None),
        cors.response_headers(filters.cors, request) if filters.cors is not None else (),
    )


def _mirrors(filters: FilterSet) -> list[tuple[MirrorTarget, Mirror]]:
    """Each mirror with its target (compilation kept only those that resolve, their
    namespace filled in)."""
    return [(MirrorTarget(_key(m.backend), m.backend.port), m) for m in filters.mirrors]


def choose_backend(backends: tuple[Backend, ...], choose: Choose) -> Backend | None:
    """One of ``backends`` by weight (``choose(total)`` picks the point); None when every
    weight is 0."""
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = choose(total)
    for backend in backends:
        if point < backend.weight:
            return backend
        point -= backend.weight
    return None  # choose broke its contract (a point outside [0, total))


# --- Compilation ---------------------------------------------------------------------------


def _key(ref: BackendRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def _age(created: str) -> tuple[int, float]:
    """Oldest first; a route without a readable creation time after every other."""
    try:
        return (0, datetime.fromisoformat(created).timestamp())
    except ValueError:
        return (1, 0.0)


class _Compiler:
    def __init__(self, services: Iterable[Service]) -> None:
        self.services = {s.key: s for s in services}

    def backend(self, route: Route, ref: BackendRef) -> Backend:
        filters = FilterSet.of(ref.filters)
        filters = self.resolved_mirrors(route, filters)
        if (ref.group, ref.kind) != ("", "Service"):
            return Backend("", ref.port, ref.weight, filters, resolved=False, ready=False)
        key = f"{ref.namespace or route.namespace}/{ref.name}"
        service = self.services.get(key)
        resolved = service is not None and service.port(ref.port) is not None
        ready = resolved and service is not None and bool(service.endpoints)
        return Backend(key, ref.port, ref.weight, filters, resolved, ready)

    def resolved_mirrors(self, route: Route, filters: FilterSet) -> FilterSet:
        """``filters`` with each mirror's namespace filled in and the mirrors whose Service
        port does not exist left out (reported by the control plane as BackendNotFound)."""
        if not filters.mirrors:
            return filters
        kept = []
        for m in filters.mirrors:
            ref = replace(m.backend, namespace=m.backend.namespace or route.namespace)
            service = self.services.get(_key(ref))
            if (ref.group, ref.kind) == ("", "Service") and service and service.port(ref.port):
                kept.append(replace(m, backend=ref))
        return replace(filters, mirrors=tuple(kept))

    def entries(self, route: Route) -> list[Entry]:
        """Every match of ``route`` as an entry (a refused regex never gets here)."""
        age = _age(route.created)
        out: list[Entry] = []
        if isinstance(route, HttpRoute):
            for i, h in enumerate(route.rules):
                rule = Rule(
                    "HTTPRoute", route.key, i, h.name,
                    self.resolved_mirrors(route, FilterSet.of(h.filters)),
                    tuple(self.backend(route, b) for b in h.backends),
                    h.timeout_ms, h.backend_timeout_ms, h.retry,
                )  # fmt: skip
                for j, match in enumerate(h.matches):
                    matcher = HttpMatcher.compile(match)
                    out.append(Entry((matcher.precedence, age, route.key, i, j), matcher, rule))
        else:
            for i, g in enumerate(route.rules):
                rule = Rule(
                    "GRPCRoute", route.key, i, g.name,
                    self.resolved_mirrors(route, FilterSet.of(g.filters)),
                    tuple(self.backend(route, b) for b in g.backends), retry=g.retry,
                )  # fmt: skip
                grpc = [GrpcMatcher.compile(m) for m in g.matches] or [GrpcMatcher()]
                for j, grpc_matcher in enumerate(grpc):
                    out.append(
                        Entry((grpc_matcher.precedence, age, route.key, i, j), grpc_matcher, rule)
                    )
        return out


def compile_routes(
    services: Iterable[Service],
    http_routes: Iterable[HttpRoute] = (),
    grpc_routes: Iterable[GrpcRoute] = (),
) -> RouteTable:
    """The route table of ``services`` (every Service a parent or backend may name).
    Which routes apply where, and their problems, are :mod:`mesh.route_status`'s answers,
    the ones the control plane reports."""
    services = tuple(services)
    compiler = _Compiler(services)
    applied, problems = route_status([*http_routes, *grpc_routes], compiler.services.get)
    compiled: dict[RouteKey, list[Entry]] = {}
    ports: dict[PortKey, PortRoutes] = {}
    for (port_key, group), routes in applied.items():
        entries = []
        for route in routes:
            key = route_key(route)
            if key not in compiled:
                compiled[key] = compiler.entries(route)
            entries += compiled[key]
        # One entry per (route, rule, match): a route attached twice to one port counts once.
        unique = {e.order: e for e in entries}
        ordered = tuple(unique[k] for k in sorted(unique))
        current = ports.get(port_key, PortRoutes())
        if group:
            consumers = {**current.consumers, group: ordered}
            ports[port_key] = PortRoutes(current.producer, consumers)
        else:
            ports[port_key] = PortRoutes(ordered, current.consumers)
    found = [p for key in sorted(problems) for p in problems[key]]
    return RouteTable(ports, services, found)


def compile_snapshot(snapshot: MeshSnapshot) -> RouteTable:
    """The route table of a snapshot (or a waypoint's view of one)."""
    return compile_routes(snapshot.services, snapshot.http_routes, snapshot.grpc_routes)
