"""Route status, decided once: where each HTTPRoute and GRPCRoute attaches, which of them
apply, and every problem Gateway API's ``Accepted`` and ``ResolvedRefs`` conditions report.
The control plane writes the conditions (:mod:`k8s.translate_l7`); the waypoint's route
table (:mod:`waypoint.routes`) acts on the same answers, so what a route's status says is
what the waypoint does.

**Attachment (GAMMA).** A parentRef of group "" and kind ``Service`` attaches a route to
that Service's ports: the one ``port`` names, the one ``sectionName`` names, or every
port; a Service not in the mesh, or a port it does not have, is ``NoMatchingParent``. A
route in the Service's namespace is a producer route (group ""), one in another namespace
a consumer route (group: its namespace). When GRPCRoutes and HTTPRoutes attach to one
Service port in one group, the GRPCRoutes apply and the HTTPRoutes are ``Conflicted``
(GEP-1294).

**Gateway parents** are checked for the control plane only (``gateways``): a parent
that names no Gateway, or no listener of it (``sectionName``, ``port``), is
``NoMatchingParent``; listeners whose ``allowedRoutes`` refuse the route's namespace or
kind, ``NotAllowedByListeners``; an admitted one ``UnsupportedValue``, since ambit's
waypoints apply only routes attached to Services. A Gateway of another class is another
controller's: nothing is said of it. A parent of any other kind is ``NoMatchingParent``.

**Values the waypoint will not act on** (``UnsupportedValue``): a regular expression
outside :mod:`mesh.route_regex`'s dialect (the route is left out whole), a filter whose
settings ambit does not keep, or an ``ExtensionRef`` to a kind other than ambit's
``FaultInjection`` and ``LocalRateLimit`` (its rule answers 500, as Gateway API asks).

**References** (``ResolvedRefs``): a backendRef (or a mirror's) of a kind other than
Service is ``InvalidKind``; a Service not in the mesh, or a port it does not have,
``BackendNotFound`` (the waypoint answers 500 for its share); so is an ``ExtensionRef`` to
a FaultInjection or LocalRateLimit the route's namespace does not have, when the caller
says which exist (``extensions``): the rule answers 500, as Gateway API asks of a custom
filter that cannot be resolved. Mesh routes may name
backends in any namespace without a ReferenceGrant (GEP-1294); a route attached only to
Gateways may not, and ambit has no ReferenceGrant kind, so its cross-namespace backends
are ``RefNotPermitted``.

Pure: model values in, problems out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from mesh.model_l7 import (
    BackendRef,
    Filter,
    Gateway,
    GrpcRoute,
    GrpcRule,
    HttpMatch,
    HttpRoute,
    HttpRule,
    Pairs,
    ParentRef,
)
from mesh.model_workloads import Service
from mesh.route_regex import pattern_problem

ACCEPTED: Final = "Accepted"
RESOLVED_REFS: Final = "ResolvedRefs"
NO_MATCHING_PARENT: Final = "NoMatchingParent"
NOT_ALLOWED_BY_LISTENERS: Final = "NotAllowedByListeners"
UNSUPPORTED_VALUE: Final = "UnsupportedValue"
CONFLICTED: Final = "Conflicted"
BACKEND_NOT_FOUND: Final = "BackendNotFound"
INVALID_KIND: Final = "InvalidKind"
REF_NOT_PERMITTED: Final = "RefNotPermitted"
# The reasons of each condition when it is False, the first found counting first.
NOT_ACCEPTED: Final = (NO_MATCHING_PARENT, NOT_ALLOWED_BY_LISTENERS, UNSUPPORTED_VALUE, CONFLICTED)
NOT_RESOLVED: Final = (INVALID_KIND, REF_NOT_PERMITTED, BACKEND_NOT_FOUND)

Route = HttpRoute | GrpcRoute
PortKey = tuple[str, int]  # (Service key, port)
Group = tuple[PortKey, str]  # a Service port and "" (producer routes) or a client namespace
RouteKey = tuple[str, str]  # (kind, namespace/name)
Services = Callable[[str], Service | None]
Extensions = Callable[[str, str], bool]  # (kind, namespace/name) -> whether it exists
GATEWAY_GROUP: Final = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class RouteProblem:
    """Why (part of) a route does not apply: a Gateway API reason and a sentence;
    ``parent``: the parentRef it is about (its ``status.parents`` entry), None for one
    about the whole route (every parent's)."""

    kind: str  # HTTPRoute or GRPCRoute
    route: str  # namespace/name
    reason: str
    message: str
    parent: ParentRef | None = None

    @property
    def condition(self) -> str:
        """The condition it makes False: ``Accepted`` or ``ResolvedRefs``."""
        return RESOLVED_REFS if self.reason in NOT_RESOLVED else ACCEPTED


@dataclass(frozen=True)
class Gateways:
    """What the control plane knows of Gateway parents: the waypoint Gateway of a key, if
    it is one; whether a Gateway of that key exists at all; a namespace's labels."""

    waypoint: Callable[[str], Gateway | None]
    exists: Callable[[str], bool]
    namespace_labels: Callable[[str], Pairs]


def route_kind(route: Route) -> str:
    return "HTTPRoute" if isinstance(route, HttpRoute) else "GRPCRoute"


def route_key(route: Route) -> RouteKey:
    return (route_kind(route), route.key)


def _is_service(ref: ParentRef | BackendRef) -> bool:
    return (ref.group, ref.kind) == ("", "Service")


def _ref_key(ref: ParentRef | BackendRef, route: Route) -> str:
    return f"{ref.namespace or route.namespace}/{ref.name}"


def service_ports(route: Route, parent: ParentRef, services: Services) -> list[PortKey] | str:
    """The Service ports a Service ``parent`` attaches ``route`` to, or why none."""
    key = _ref_key(parent, route)
    service = services(key)
    if service is None:
        return f"parent Service {key} not found; the route does not apply to it"
    if parent.port:
        ports = [p for p in service.ports if p.port == parent.port]
    elif parent.section_name:
        ports = [p for p in service.ports if p.name == parent.section_name]
    else:
        ports = list(service.ports)
    if not ports:
        wanted = parent.port or parent.section_name
        return f"parent Service {key} has no port {wanted}; the route does not apply to it"
    return [(key, p.port) for p in ports]


def _patterns(route: Route) -> Iterator[str]:
    for rule in route.rules:
        for match in rule.matches:
            if isinstance(match, HttpMatch):
                if match.path_type == "RegularExpression":
                    yield match.path
                yield from (q.value for q in match.query_params if q.type != "Exact")
            elif match.type != "Exact":
                yield from (p for p in (match.service, match.method) if p)
            yield from (h.value for h in match.headers if h.type != "Exact")


def refusals(route: Route) -> list[str]:
    """Why the waypoint leaves the whole route out: each refused regular expression."""
    found = (pattern_problem(pattern) for pattern in _patterns(route))
    return [f"{problem}; the route is not accepted" for problem in found if problem is not None]


def backends(route: Route) -> Iterator[BackendRef]:
    """Every backendRef of the route, mirrors' included."""
    for rule in route.rules:
        filters = list(rule.filters)
        for backend in rule.backends:
            yield backend
            filters.extend(backend.filters)
        for f in filters:
            if f.mirror is not None:
                yield f.mirror.backend


def attach(
    routes: Iterable[Route], services: Services
) -> tuple[dict[Group, tuple[Route, ...]], dict[RouteKey, list[RouteProblem]]]:
    """Which routes apply to each Service port and group (GRPCRoutes over HTTPRoutes; a
    refused route nowhere), and the problems of attachment: ``NoMatchingParent`` of
    Service parents, a refused regex (``UnsupportedValue``), ``Conflicted``."""
    problems: dict[RouteKey, list[RouteProblem]] = {}
    kinds: dict[Group, dict[str, list[Route]]] = {}
    parents_of: dict[tuple[RouteKey, PortKey], list[ParentRef]] = {}

    def report(route: Route, reason: str, message: str, parent: ParentRef | None) -> None:
        found = problems.setdefault(route_key(route), [])
        problem = RouteProblem(route_kind(route), route.key, reason, message, parent)
        if problem not in found:
            found.append(problem)

    for route in routes:
        refused = refusals(route)
        for message in refused:
            report(route, UNSUPPORTED_VALUE, message, None)
        for parent in route.parents:
            if not _is_service(parent):
                continue
            ports = service_ports(route, parent, services)
            if isinstance(ports, str):
                report(route, NO_MATCHING_PARENT, ports, parent)
                continue
            if refused:
                continue
            for port_key in ports:
                parents_of.setdefault((route_key(route), port_key), []).append(parent)
                producer = port_key[0].partition("/")[0] == route.namespace
                by_kind = kinds.setdefault((port_key, "" if producer else route.namespace), {})
                attached = by_kind.setdefault(route_kind(route), [])
                if route not in attached:
                    attached.append(route)
    applied: dict[Group, tuple[Route, ...]] = {}
    for group, by_kind in sorted(kinds.items()):
        grpc, http = by_kind.get("GRPCRoute", []), by_kind.get("HTTPRoute", [])
        applied[group] = tuple(grpc or http)
        for route in http if grpc else ():
            port_key, _ = group
            service, port = port_key
            message = f"GRPCRoutes attach to Service {service} port {port} too; they apply"
            for parent in parents_of[(route_key(route), port_key)]:
                report(route, CONFLICTED, message, parent)
    return applied, problems


def _gateway_problem(route: Route, parent: ParentRef, gateways: Gateways) -> RouteProblem | None:
    key = _ref_key(parent, route)
    kind = route_kind(route)

    def problem(reason: str, message: str) -> RouteProblem:
        return RouteProblem(kind, route.key, reason, message, parent)

    if (parent.group, parent.kind) != (GATEWAY_GROUP, "Gateway"):
        what = f"{parent.group or 'core'}/{parent.kind} {parent.name}"
        return problem(NO_MATCHING_PARENT, f"parent {what}: ambit attaches routes to Services")
    gateway = gateways.waypoint(key)
    if gateway is None:
        if gateways.exists(key):
            return None  # another controller's Gateway: its status is not ambit's to write
        return problem(NO_MATCHING_PARENT, f"parent Gateway {key} does not exist")
    listeners = [
        lis
        for lis in gateway.listeners
        if parent.section_name in ("", lis.name) and parent.port in (0, lis.port)
    ]
    if not listeners:
        wanted = parent.section_name or parent.port
        return problem(NO_MATCHING_PARENT, f"parent Gateway {key} has no listener {wanted}")
    labels = gateways.namespace_labels(route.namespace)
    if not any(
        lis.admits_namespace(route.namespace, labels, gateway.namespace)
        and lis.admits_kind(GATEWAY_GROUP, kind)
        for lis in listeners
    ):
        message = (
            f"no listener of Gateway {key} admits {kind}s of namespace {route.namespace}"
            " (its allowedRoutes)"
        )
        return problem(NOT_ALLOWED_BY_LISTENERS, message)
    return problem(
        UNSUPPORTED_VALUE,
        f"parent Gateway {key}: ambit's waypoints apply routes whose parent is a Service"
        " (GAMMA), not routes attached to the waypoint's Gateway",
    )


def _backend_problem(
    route: Route, backend: BackendRef, services: Services, mesh: bool
) -> RouteProblem | None:
    kind = route_kind(route)
    if not _is_service(backend):
        what = f"{backend.group or 'core'}/{backend.kind} {backend.name}"
        message = f"backend {what}: ambit knows only Service backends; requests to it fail (500)"
        return RouteProblem(kind, route.key, INVALID_KIND, message)
    key = _ref_key(backend, route)
    if not mesh and backend.namespace not in ("", route.namespace):
        return RouteProblem(
            kind, route.key, REF_NOT_PERMITTED,
            f"backend Service {key} is in another namespace and no ReferenceGrant can allow"
            " it (ambit has none); only routes attached to Services may do that",
        )  # fmt: skip
    service = services(key)
    if service is None:
        message = f"backend Service {key} not found; requests to it fail (500)"
    elif service.port(backend.port) is None:
        message = f"backend Service {key} has no port {backend.port}; requests to it fail (500)"
    else:
        return None
    return RouteProblem(kind, route.key, BACKEND_NOT_FOUND, message)


def check_routes(
    routes: Iterable[Route],
    services: Services,
    gateways: Gateways | None = None,
    extensions: Extensions | None = None,
) -> dict[RouteKey, tuple[RouteProblem, ...]]:
    """Every problem of each of ``routes`` (those without one left out): parents first,
    then values the waypoint will not act on, then references. ``Conflicted`` is decided
    among ``routes``: give every route attached to the Services they name. Gateway
    parents only with ``gateways`` (the waypoint skips them); ExtensionRefs to ambit's
    filter objects only with ``extensions``."""
    return route_status(routes, services, gateways, extensions)[1]


def _filter_problem(
    route: Route, i: int, f: Filter, extensions: Extensions | None
) -> RouteProblem | None:
    kind = route_kind(route)
    ref = f.extension
    if not f.supported:
        what = f"{f.type} filters"
        if ref is not None:
            what = f"ExtensionRef filters to {ref.group or 'core'}/{ref.kind}"
        message = f"rule {i}: ambit does not apply {what}; the rule answers 500"
        return RouteProblem(kind, route.key, UNSUPPORTED_VALUE, message)
    if ref is not None and extensions is not None:
        key = f"{route.namespace}/{ref.name}"
        if not extensions(ref.kind, key):
            message = f"rule {i}: {ref.kind} {key} does not exist; the rule answers 500"
            return RouteProblem(kind, route.key, BACKEND_NOT_FOUND, message)
    return None


def route_status(
    routes: Iterable[Route],
    services: Services,
    gateways: Gateways | None = None,
    extensions: Extensions | None = None,
) -> tuple[dict[Group, tuple[Route, ...]], dict[RouteKey, tuple[RouteProblem, ...]]]:
    """:func:`attach`'s routes that apply, and :func:`check_routes`' problems, at once."""
    routes = list(routes)
    applied, attachment = attach(routes, services)
    out: dict[RouteKey, tuple[RouteProblem, ...]] = {}
    for route in routes:
        found: list[RouteProblem] = []
        if gateways is not None:
            found += [
                p
                for parent in route.parents
                if not _is_service(parent) and (p := _gateway_problem(route, parent, gateways))
            ]
        found += attachment.get(route_key(route), [])
        rules: tuple[HttpRule | GrpcRule, ...] = route.rules
        for i, rule in enumerate(rules):
            for f in [*rule.filters, *(f for b in rule.backends for f in b.filters)]:
                if (problem := _filter_problem(route, i, f, extensions)) is not None:
                    found.append(problem)
        mesh = any(_is_service(p) for p in route.parents)
        found += [p for b in backends(route) if (p := _backend_problem(route, b, services, mesh))]
        unique = tuple(dict.fromkeys(found))
        if unique:
            out[route_key(route)] = unique
    return applied, out
