"""The conditions of the traffic-policy kinds, from translation's problems
(:mod:`k8s.translate_traffic`), pure:

- ``Accepted``: whether the object takes effect, GEP-713's reasons when not
  (``TargetNotFound``, ``Conflicted``; a DestinationRule's ``WildcardHost``);
- ``ambit.io/FullyApplied`` (DestinationRule, BackendTrafficPolicy): whether every field
  set is applied, ``UnsupportedField`` (each path named) or ``UnsupportedValue`` when not;
- a BackendTrafficPolicy's also per target Service, the ``status.ancestors`` Gateway
  API writes (:mod:`k8s.status_docs`): each Service's ``Accepted`` and the policy's
  ``FullyApplied``;
- a FaultInjection or LocalRateLimit is ``Accepted``: applied wherever a route rule names
  it (a route naming one that does not exist says so in its own ``ResolvedRefs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from k8s import manifests as m
from k8s.problems import Problem
from k8s.store import Condition
from k8s.translate_traffic import NOT_ACCEPTED, NOT_SUPPORTED, service_of_host
from mesh.model_l7 import ParentRef

ACCEPTED: Final = "Accepted"
CONDITION_FULLY_APPLIED: Final = "ambit.io/FullyApplied"

ParentConditions = list[tuple[ParentRef, list[Condition]]]


def _condition(
    kind: str, problems: Sequence[Problem], reasons: tuple[str, ...], ok: tuple[str, str]
) -> Condition:
    found = list(dict.fromkeys((p.reason, p.message) for p in problems if p.reason in reasons))
    if not found:
        return Condition(kind, "True", *ok)
    return Condition(kind, "False", found[0][0], "; ".join(message for _, message in found))


def _applied(problems: Sequence[Problem]) -> Condition:
    ok = ("FullyApplied", "every field set is applied")
    return _condition(CONDITION_FULLY_APPLIED, problems, NOT_SUPPORTED, ok)


def traffic_conditions(
    obj: m.K8sObject, problems: Sequence[Problem]
) -> tuple[list[Condition], ParentConditions | None]:
    """The object's conditions and, for a BackendTrafficPolicy, its conditions per target
    Service (None for the other kinds)."""
    if isinstance(obj, m.FaultInjection | m.LocalRateLimit):
        message = "applied where an HTTPRoute or GRPCRoute rule names it (ExtensionRef filter)"
        return [Condition(ACCEPTED, "True", ACCEPTED, message)], None
    if isinstance(obj, m.DestinationRule):
        service = service_of_host(obj.host, obj.namespace)
        ok = (ACCEPTED, f"the waypoint of Service {service} applies it")
        return [_condition(ACCEPTED, problems, NOT_ACCEPTED, ok), _applied(problems)], None
    if not isinstance(obj, m.BackendTrafficPolicy):
        return [], None
    ok = (ACCEPTED, "the waypoints of its Services apply it")
    whole = [_condition(ACCEPTED, problems, NOT_ACCEPTED, ok), _applied(problems)]
    parents: ParentConditions = []
    for target in obj.target_refs:
        if (target.group, target.kind) != ("", "Service"):
            continue
        parent = ParentRef("", "Service", target.name)
        own = [p for p in problems if p.parent == parent]
        key = f"{obj.namespace}/{target.name}"
        accepted = _condition(ACCEPTED, own, NOT_ACCEPTED, (ACCEPTED, f"applies to Service {key}"))
        parents.append((parent, [accepted, _applied(problems)]))
    return whole, parents
