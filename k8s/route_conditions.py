"""A route's Gateway API conditions, as :mod:`mesh.route_status` decides them: once for
the whole route (``status.conditions`` in ambit's store and status file) and per parent
(Gateway API's ``status.parents``, what the status writer puts on the cluster).

A parent is ambit's when ambit is its controller: a Service (GAMMA: ambit is the mesh),
or a Gateway of a waypoint class. Nothing is said of any other parent (another
controller's Gateway, a kind ambit does not know): a route's other parents keep what
their controllers write. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from k8s.manifests import GRPCRoute, HTTPRoute
from k8s.problems import Problem
from k8s.store import Condition
from mesh.model_l7 import ParentRef
from mesh.route_status import ACCEPTED, GATEWAY_GROUP, NOT_ACCEPTED, NOT_RESOLVED, RESOLVED_REFS

SHOWN: Final = 8  # problems spelled out in one condition's message


def route_conditions(
    problems: Sequence[Problem],
    accepted: str = "every parent takes the route; waypoints apply it",
) -> list[Condition]:
    """``Accepted`` and ``ResolvedRefs``: False with the reason of the first problem of
    each, and every such problem's sentence in the message; True (reasons ``Accepted``,
    ``ResolvedRefs``) otherwise."""

    def condition(kind: str, reasons: tuple[str, ...], ok: str) -> Condition:
        found = list(dict.fromkeys((p.reason, p.message) for p in problems if p.reason in reasons))
        if not found:
            return Condition(kind, "True", kind, ok)
        shown = [message for _, message in found[:SHOWN]]
        if len(found) > SHOWN:
            shown.append(f"and {len(found) - SHOWN} more")
        return Condition(kind, "False", found[0][0], "; ".join(shown))

    return [
        condition(ACCEPTED, NOT_ACCEPTED, accepted),
        condition(RESOLVED_REFS, NOT_RESOLVED, "every backend is a Service port in the mesh"),
    ]


def is_service(parent: ParentRef) -> bool:
    return (parent.group, parent.kind) == ("", "Service")


def is_gateway(parent: ParentRef) -> bool:
    return (parent.group, parent.kind) == (GATEWAY_GROUP, "Gateway")


def parent_conditions(
    route: HTTPRoute | GRPCRoute,
    problems: Sequence[Problem],
    waypoint_gateway: Callable[[str, str], bool],
) -> list[tuple[ParentRef, list[Condition]]]:
    """Each parent of ``route`` that ambit is the controller of (a Service, or a Gateway
    for which ``waypoint_gateway(namespace, name)`` holds), in ``parentRefs`` order, with
    its conditions: those of the problems about it and about the whole route."""
    out: list[tuple[ParentRef, list[Condition]]] = []
    for parent in route.parent_refs:
        namespace = parent.namespace or route.namespace
        ours = is_gateway(parent) and waypoint_gateway(namespace, parent.name)
        if not (is_service(parent) or ours):
            continue
        own = [p for p in problems if p.parent is None or p.parent == parent]
        out.append((parent, route_conditions(own, "the parent takes the route")))
    return out
