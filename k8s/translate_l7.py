"""What the L7 objects mean for the mesh, as pure functions :class:`k8s.translate.Translator`
calls: which Gateways are waypoints, which waypoint an object's labels name, whether a
named waypoint can be used, what is wrong with a route's references, and each object's
model form.

- A Gateway whose class is ``istio-waypoint`` or ``ambit-waypoint`` is a waypoint
  (:func:`waypoint`); its ``istio.io/waypoint-for`` (or ``ambit.io/waypoint-for``) label
  says which traffic it takes, ``service`` by default.
- ``istio.io/use-waypoint`` (or ``ambit.io/``) on a Namespace, Service or Pod names a
  waypoint in the object's namespace, or in the one ``...use-waypoint-namespace`` names;
  ``none`` opts a Service or Pod out of its namespace's (:func:`use_waypoint`).
- A waypoint of another namespace is used only when its listeners' ``allowedRoutes``
  admit the object's namespace (``All``, or a ``Selector`` matching its labels, as Istio
  asks of ``use-waypoint-namespace``); otherwise ``WaypointNotAllowed`` and the traffic
  fails closed.
- A waypoint is used only when its Gateway exists, is of a waypoint class, takes that
  traffic, and is ready: the Service with its key has an endpoint in the mesh, so
  ztunnel's plan never sends traffic to a waypoint that is not running
  (:func:`resolve_waypoint`). Otherwise the object goes without one and says why:
  ``WaypointNotFound``, ``WaypointNotReady`` or ``WaypointTrafficMismatch``, reported on
  the object whose own label names the waypoint, and on a Service also when its
  namespace's label does (unless that waypoint takes no traffic to Services, by design).
  A waypoint's own Service and pods never go through it.
- A route is carried as read; its problems, each with Gateway API's reason
  (``NoMatchingParent``, ``NotAllowedByListeners``, ``UnsupportedValue``,
  ``Conflicted``; ``BackendNotFound``, ``InvalidKind``, ``RefNotPermitted``), are
  :mod:`mesh.route_status`'s, the answers the waypoint acts on (:func:`route_problems`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, Literal

from k8s import manifests as m
from k8s.problems import Problem
from k8s.store import ObjectRef
from mesh import model, model_l7, route_status
from mesh.constants import (
    ISTIO_LABEL_USE_WAYPOINT,
    ISTIO_LABEL_USE_WAYPOINT_NAMESPACE,
    ISTIO_LABEL_WAYPOINT_FOR,
    LABEL_USE_WAYPOINT,
    LABEL_USE_WAYPOINT_NAMESPACE,
    LABEL_WAYPOINT_FOR,
    WAYPOINT_CLASSES,
)

WAYPOINT_NOT_FOUND: Final = "WaypointNotFound"
WAYPOINT_NOT_READY: Final = "WaypointNotReady"
WAYPOINT_TRAFFIC_MISMATCH: Final = "WaypointTrafficMismatch"
WAYPOINT_NOT_ALLOWED: Final = "WaypointNotAllowed"
WAYPOINT_REASONS: Final = (
    WAYPOINT_NOT_FOUND, WAYPOINT_NOT_READY, WAYPOINT_TRAFFIC_MISMATCH, WAYPOINT_NOT_ALLOWED,
)  # fmt: skip
INVALID_WAYPOINT_FOR: Final = "InvalidWaypointFor"
OPT_OUT: Final = "none"  # use_waypoint's answer for an object that opts out

Traffic = Literal["service", "workload"]
_USE_WAYPOINT: Final = (
    (LABEL_USE_WAYPOINT, LABEL_USE_WAYPOINT_NAMESPACE),
    (ISTIO_LABEL_USE_WAYPOINT, ISTIO_LABEL_USE_WAYPOINT_NAMESPACE),
)
_WAYPOINT_LABELS: Final = frozenset(label for pair in _USE_WAYPOINT for label in pair)


# --- Waypoints -----------------------------------------------------------------------------


def waypoint(gateway: m.Gateway) -> tuple[model_l7.Gateway | None, Problem | None]:
    """The waypoint ``gateway`` is (None if its class is not a waypoint class), and a
    Problem if its ``waypoint-for`` label is not one ambit knows (it then takes Service
    traffic, the default)."""
    if gateway.gateway_class not in WAYPOINT_CLASSES:
        return None, None
    labels = dict(gateway.labels)
    label = LABEL_WAYPOINT_FOR if LABEL_WAYPOINT_FOR in labels else ISTIO_LABEL_WAYPOINT_FOR
    for_traffic = labels.get(label, "service")
    problem = None
    if for_traffic not in ("service", "workload", "all", "none"):
        problem = Problem(
            INVALID_WAYPOINT_FOR,
            f"{label}: {for_traffic!r} is not service, workload, all or none; this waypoint"
            " takes traffic to Services, the default",
        )
        for_traffic = "service"
    entry = model_l7.Gateway(
        gateway.name,
        gateway.namespace,
        gateway.gateway_class,
        gateway.listeners,
        gateway.addresses,
        for_traffic,  # type: ignore[arg-type]
    )
    return entry, problem


def use_waypoint(labels: m.Pairs, namespace: str) -> str | None:
    """The waypoint an object's own labels name: its key (``namespace/name``),
    :data:`OPT_OUT`, or None when they name none. ambit's labels count before Istio's:
    where ``ambit.io/use-waypoint`` is present (even empty, which names none) Istio's
    pair is not read; each name label goes with the ``-namespace`` label of its prefix."""
    values = {k: v for k, v in labels if k in _WAYPOINT_LABELS} if labels else None
    if not values:  # most objects name no waypoint: one pass over their labels
        return None
    for name_label, namespace_label in _USE_WAYPOINT:
        if name_label not in values:
            continue
        name = values[name_label]
        if not name:
            return None
        in_namespace = values.get(namespace_label) or namespace
        return OPT_OUT if name == OPT_OUT else f"{in_namespace}/{name}"
    return None


def resolve_waypoint(
    key: str,
    traffic: Traffic | None,
    entry: model_l7.Gateway | None,
    gateway: m.Gateway | None,
    ready: bool,
    admitted: bool = True,
) -> tuple[str | None, Problem | None]:
    """The waypoint traffic (to a Service, a workload; None: do not ask) must cross when
    an object names ``key``, and what is wrong with it: ``(key, None)`` when it runs;
    ``(key, why)`` when it is missing or not running: the binding stays and the traffic
    fails closed (ztunnel refuses it) rather than going around the waypoint and its
    policies; ``(None, why)`` when the waypoint takes no such traffic (a missing one is
    taken to take Services' traffic only, the default). ``entry`` is
    the waypoint, ``gateway`` the Gateway object of that key if any, ``ready`` whether
    the Service of that key has an endpoint in the mesh, ``admitted`` whether its
    listeners admit the namespace of the object (:meth:`mesh.model_l7.Gateway.admits`):
    when they do not, the binding is :func:`mesh.model_l7.refused_waypoint` of the key, a
    waypoint that never exists, so ztunnel refuses the traffic and the waypoint, which
    serves only what is bound to its own key, would too."""
    if entry is None:
        if gateway is None:
            found = f"there is no Gateway {key}"
        else:
            classes = " or ".join(WAYPOINT_CLASSES)
            found = f"Gateway {key} has class {gateway.gateway_class!r}, not {classes}"
        # What it would take is unknown: a waypoint takes Services' traffic by default, so
        # that is what fails closed; pod-IP traffic keeps going to the pods.
        return key if traffic != "workload" else None, Problem(
            WAYPOINT_NOT_FOUND,
            f"uses waypoint {key}, but {found}; its traffic is refused until one exists (or"
            " the label is fixed), never sent around the waypoint",
        )
    if traffic is not None and not entry.takes(traffic):
        what = "to Services" if traffic == "service" else "to workloads"
        return None, Problem(
            WAYPOINT_TRAFFIC_MISMATCH,
            f"uses waypoint {key}, which does not take traffic {what} (waypoint-for:"
            f" {entry.for_traffic}); its traffic goes without a waypoint",
        )
    if not admitted:
        return model_l7.refused_waypoint(key), Problem(
            WAYPOINT_NOT_ALLOWED,
            f"uses waypoint {key}, whose listeners do not admit this namespace (their"
            " allowedRoutes); its traffic is refused, never sent around the waypoint",
        )
    if not ready:
        return key, Problem(
            WAYPOINT_NOT_READY,
            f"uses waypoint {key}, which has no ready pod (its Service {key} has no endpoint"
            " in the mesh); until it has one, its traffic is refused, never sent around the"
            " waypoint and the policies bound to it",
        )
    return key, None


def waypoint_ready(
    service: model.Service | None, workload: Callable[[str], model.Workload | None]
) -> bool:
    """Whether a waypoint runs: its Service (``service``, the one with its key) has an
    endpoint whose workload is in the mesh, which ztunnel's plan needs to send traffic
    through it."""
    endpoints = service.endpoints if service is not None else ()
    return any((w := workload(e.workload_uid)) is not None and w.meshed for e in endpoints)


# --- Routes --------------------------------------------------------------------------------

Route = m.HTTPRoute | m.GRPCRoute
ModelRoute = model_l7.HttpRoute | model_l7.GrpcRoute
_SERVICE: Final = ("", "Service")
_GATEWAY: Final = (model.GATEWAY_GROUP, "Gateway")


def route_targets(route: Route) -> set[ObjectRef]:
    """The objects the route's problems depend on besides other routes: the Services and
    Gateways it names, the FaultInjections and LocalRateLimits its ExtensionRef filters
    name, and, when it names a parent other than a Service, its Namespace (whose labels a
    listener's ``allowedRoutes`` selector reads)."""
    found: set[ObjectRef] = set()
    for parent in route.parent_refs:
        kind = {_SERVICE: "Service", _GATEWAY: "Gateway"}.get((parent.group, parent.kind))
        if kind is not None:
            found.add((kind, parent.namespace or route.namespace, parent.name))
        if kind != "Service":
            found.add(("Namespace", "", route.namespace))
    model_form = http_route(route) if isinstance(route, m.HTTPRoute) else grpc_route(route)
    for backend in route_status.backends(model_form):
        if (backend.group, backend.kind) == _SERVICE:
            found.add(("Service", backend.namespace or route.namespace, backend.name))
    for rule in route.rules:
        for f in [*rule.filters, *(f for b in rule.backends for f in b.filters)]:
            if f.extension is not None and f.extension.known:
                found.add((f.extension.kind, route.namespace, f.extension.name))
    return found


def route_problems(
    routes: Iterable[ModelRoute],
    services: route_status.Services,
    gateways: route_status.Gateways,
    extensions: route_status.Extensions | None = None,
) -> dict[ObjectRef, tuple[Problem, ...]]:
    """:func:`mesh.route_status.check_routes` (the rule the waypoint acts on) as Problems
    by object: give every route attached to a Service the checked routes name, so that
    ``Conflicted`` is decided among them all."""
    out: dict[ObjectRef, tuple[Problem, ...]] = {}
    checked = route_status.check_routes(routes, services, gateways, extensions)
    for (kind, key), found in checked.items():
        namespace, _, name = key.partition("/")
        out[(kind, namespace, name)] = tuple(Problem(p.reason, p.message, p.parent) for p in found)
    return out


# --- Model forms ---------------------------------------------------------------------------


def http_route(route: m.HTTPRoute) -> model_l7.HttpRoute:
    return model_l7.HttpRoute(
        route.name, route.namespace, route.parent_refs, route.hostnames, route.rules,
        route.creation_timestamp,
    )  # fmt: skip


def grpc_route(route: m.GRPCRoute) -> model_l7.GrpcRoute:
    return model_l7.GrpcRoute(
        route.name, route.namespace, route.parent_refs, route.hostnames, route.rules,
        route.creation_timestamp,
    )  # fmt: skip


def request_authentication(auth: m.RequestAuthentication) -> model.RequestAuthentication:
    return model.RequestAuthentication(
        auth.name,
        auth.namespace,
        auth.selector,
        auth.jwt_rules,
        tuple(model.TargetRef(t.group, t.kind, t.name) for t in auth.target_refs),
    )
