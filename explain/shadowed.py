"""The route rules that also match a request but rank after the one the waypoint chose
("my route is not applied"), each with the place of the waypoint's order it lost on.

The order is the waypoint's own: the table's entries as :mod:`waypoint.routes` sorted them
(:data:`waypoint.routes.Order`: the match's precedence, the route's age, its
``namespace/name``, rule, match), matched by their own matchers; which part of a match's
precedence differs is named by the matcher (``PRECEDENCE`` of
:class:`~waypoint.matching.HttpMatcher` and :class:`~waypoint.matching.GrpcMatcher`).
Nothing here ranks anything again: it only says where two entries first differ.
"""

from __future__ import annotations

from collections.abc import Sequence

from explain.steps import Shadowed
from mesh.model import MeshSnapshot
from waypoint.http_request import HttpRequest
from waypoint.matching import GrpcMatcher, HttpMatcher
from waypoint.routes import Entry

_PATH_KIND = {
    "Exact": "exact path",
    "PathPrefix": "path prefix",
    "RegularExpression": "path regular expression",
}


def _fewer(what: str, lost: int, won: int) -> str:
    return f"fewer {what} matches, {lost} to {won}"


def _http(place: str, won: HttpMatcher, lost: HttpMatcher) -> str | None:
    if place == "path type":
        return f"{lost.path.type} {lost.path.value} ranks after {won.path.type} {won.path.value}"
    if place == "path length":
        return f"shorter {_PATH_KIND[lost.path.type]} {lost.path.value} than {won.path.value}"
    if place == "method":
        return f"no method match; the winner's is {won.method}"
    if place == "headers":
        return _fewer("header", len(lost.headers), len(won.headers))
    if place == "query":
        return _fewer("query parameter", len(lost.query), len(won.query))
    return None


def _grpc(place: str, won: GrpcMatcher, lost: GrpcMatcher) -> str | None:
    if place in ("service", "method"):
        mine, theirs = getattr(lost, place), getattr(won, place)
        return f"shorter gRPC {place} match, {mine or 'any'} to {theirs}"
    if place == "headers":
        return _fewer("header", len(lost.headers), len(won.headers))
    return None


def _precedence(won: Entry, lost: Entry) -> str:
    """The place of the match's precedence where ``lost`` first ranks after ``won``."""
    w, x = won.matcher, lost.matcher
    pairs = zip(w.precedence, x.precedence, strict=False)  # one kind a port: one length
    place = next((i for i, (a, b) in enumerate(pairs) if a != b), 0)
    words: str | None = None
    if isinstance(w, HttpMatcher) and isinstance(x, HttpMatcher):
        words = _http(w.PRECEDENCE[place], w, x)
    elif isinstance(w, GrpcMatcher) and isinstance(x, GrpcMatcher):
        words = _grpc(w.PRECEDENCE[place], w, x)
    return words or f"ranks after on its match's {type(w).PRECEDENCE[place]}"


def _created(snapshot: MeshSnapshot, kind: str, route: str) -> str:
    routes = snapshot.http_routes if kind == "HTTPRoute" else snapshot.grpc_routes
    return next((r.created for r in routes if r.key == route), "")


def lost_on(snapshot: MeshSnapshot, won: Entry, lost: Entry) -> str:
    """Why ``lost``, which comes after ``won`` in the table, ranks after it: the first part
    of their :data:`~waypoint.routes.Order` that differs, in words."""
    precedence, age, route, rule, _ = won.order
    precedence_x, age_x, route_x, _, _ = lost.order
    if precedence != precedence_x:
        return _precedence(won, lost)
    if age != age_x:
        kind = won.rule.kind
        mine, theirs = _created(snapshot, kind, route_x), _created(snapshot, kind, route)
        if age_x[0]:  # no readable creation time: after every route with one
            return f"no creation time, and {route} was created {theirs}"
        return f"a newer route: created {mine}, {route} on {theirs}"
    if route != route_x:
        return f"as old as {route}, whose namespace/name sorts first"
    return f"a later rule of the same route than rule {rule}"


def shadowed(
    snapshot: MeshSnapshot, entries: Sequence[Entry], request: HttpRequest
) -> tuple[Shadowed, ...]:
    """Every rule but the winner's with a match that matches ``request``, in the table's
    order (its best match only), and why it ranks after the winner: the first entry of
    ``entries`` that matches, as :meth:`~waypoint.routes.RouteTable.match` takes it."""
    matching = [e for e in entries if e.matcher.matches(request)]
    if not matching:
        return ()
    won = matching[0]
    seen = {(won.rule.route, won.rule.index)}
    out = []
    for entry in matching[1:]:
        rule = entry.rule
        if (rule.route, rule.index) in seen:
            continue
        seen.add((rule.route, rule.index))
        reason = lost_on(snapshot, won, entry)
        out.append(Shadowed(rule.kind, rule.route, rule.index, rule.name, reason))
    return tuple(out)
