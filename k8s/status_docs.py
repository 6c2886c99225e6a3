"""What the status writer (:mod:`k8s.status_writer`) applies to each object's ``/status``,
pure: the store's conditions as Kubernetes and Gateway API write them.

- a GatewayClass of a waypoint class: ``conditions`` (``Accepted``);
- a Gateway of a waypoint class: ``conditions`` (``Accepted``, ``Programmed``) and
  ``addresses``: its waypoint Service's cluster IP (same name), once it has one;
- an HTTPRoute or GRPCRoute: ``parents``, one entry per parent ambit is the controller of
  (:mod:`k8s.route_conditions`) with ``controllerName`` :data:`CONTROLLER_NAME`. Gateway
  API makes the list atomic (one owner for the whole list), so the entries of other
  controllers are read from the object and kept (:func:`merge_parents`);
- an AuthorizationPolicy (ambit's or Istio's, at the ``apiVersion`` it came as), a
  DestinationRule, a FaultInjection and a LocalRateLimit: ``conditions`` and
  ``observedGeneration``;
- a BackendTrafficPolicy (``XBackendTrafficPolicy``): ``ancestors`` (GEP-713), one entry
  per target Service with ``controllerName`` :data:`CONTROLLER_NAME`, merged with other
  controllers' entries as a route's ``parents`` are;
- a Service: ``conditions`` (``ambit.io/Accepted``, ``ambit.io/WaypointBound``).

A route's or a BackendTrafficPolicy's own ``ambit.io/LocalReplies`` (:mod:`k8s.local_replies`:
Gateway API has no place for a route's own conditions) goes into each of its entries
for a Service.

Each document names the object's ``uid``: the API server refuses (409) to apply it to
a successor of the same name. Which conditions an operator should also hear of as a
Kubernetes Event: :func:`event_problems`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from k8s.local_replies import CONDITION_LOCAL_REPLIES
from k8s.manifests import Gateway, GatewayClass, Service, kind_info
from k8s.store import Condition, Entry, ObjectStore, object_json
from k8s.traffic_conditions import CONDITION_FULLY_APPLIED
from mesh.constants import (
    CONDITION_ACCEPTED,
    CONDITION_WAYPOINT_BOUND,
    CONDITION_ZTUNNEL_ACCEPTED,
    CONTROLLER_NAME,
    WAYPOINT_CLASSES,
)
from mesh.model_l7 import ParentRef
from mesh.route_status import ACCEPTED, RESOLVED_REFS

Json = dict[str, Any]
ROUTE_KINDS: Final = ("HTTPRoute", "GRPCRoute")
POLICY_KINDS: Final = ("AuthorizationPolicy", "DestinationRule", "FaultInjection", "LocalRateLimit")
KINDS: Final = ("GatewayClass", "Gateway", *ROUTE_KINDS, *POLICY_KINDS, "BackendTrafficPolicy",
                "Service")  # fmt: skip
# The status lists merged with other controllers' entries, by kind.
MERGED: Final = {**dict.fromkeys(ROUTE_KINDS, "parents"), "BackendTrafficPolicy": "ancestors"}
# Conditions that, False, are a problem an operator must see (an Event); others, such as
# a waypoint Gateway not Programmed yet, are states that pass.
EVENT_CONDITIONS: Final = (ACCEPTED, RESOLVED_REFS, CONDITION_ACCEPTED, CONDITION_WAYPOINT_BOUND,
                           CONDITION_ZTUNNEL_ACCEPTED, CONDITION_FULLY_APPLIED)  # fmt: skip


@dataclass(frozen=True)
class StatusDoc:
    """One object's ``/status`` to apply: where, and the document (for a route, only the
    parents ambit writes, to merge with the others' before applying: ``merge`` names that
    list, ``parents`` or a policy's ``ancestors``)."""

    path: str
    document: Json
    merge: str = ""


def api_version(entry: Entry) -> str:
    """The ``apiVersion`` the object came as, else its kind's first."""
    given = (entry.document or {}).get("apiVersion")
    if isinstance(given, str) and given:
        return given
    info = kind_info(entry.ref[0])
    return info.api_versions[0] if info is not None else "v1"


def object_path(entry: Entry) -> str:
    kind, namespace, name = entry.ref
    info = kind_info(kind)
    plural = info.plural if info is not None else f"{kind.lower()}s"
    version = api_version(entry)
    base = f"/apis/{version}" if "/" in version else f"/api/{version}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{where}/{plural}/{name}"


def _conditions(conditions: Sequence[Condition]) -> list[Json]:
    return [c.to_json() for c in conditions]


def parent_ref_json(parent: ParentRef) -> Json:
    """A parentRef as Gateway API writes it (group and kind always: a Service's group is
    "", which the schema would otherwise default to Gateway API's)."""
    out: Json = {"group": parent.group, "kind": parent.kind, "name": parent.name}
    if parent.namespace:
        out["namespace"] = parent.namespace
    if parent.section_name:
        out["sectionName"] = parent.section_name
    if parent.port:
        out["port"] = parent.port
    return out


def _gateway_addresses(entry: Entry, store: ObjectStore) -> list[Json]:
    found = store.get(("Service", entry.ref[1], entry.ref[2]))
    ip = found.obj.cluster_ip if found is not None and isinstance(found.obj, Service) else None
    return [{"type": "IPAddress", "value": ip}] if ip and ip != "None" else []


def _with_observed(
    entry: Entry, parent: ParentRef, conditions: Sequence[Condition]
) -> Sequence[Condition]:
    """A parent's conditions, with the object's own ``ambit.io/LocalReplies`` when the
    parent is a Service."""
    observed = entry.condition(CONDITION_LOCAL_REPLIES)
    if observed is None or (parent.group, parent.kind) != ("", "Service"):
        return conditions
    return [*conditions, observed]


def parents_json(entry: Entry) -> list[Json]:
    """A route's ``status.parents`` entries of ambit (a BackendTrafficPolicy's
    ``ancestors``), each with its own conditions."""
    ref = "ancestorRef" if entry.ref[0] == "BackendTrafficPolicy" else "parentRef"
    return [
        {ref: parent_ref_json(parent), "controllerName": CONTROLLER_NAME,
         "conditions": _conditions(_with_observed(entry, parent, conditions))}
        for parent, conditions in entry.parents
    ]  # fmt: skip


def served_json(entry: Entry) -> Json:
    """The object as local mode's ``ambit get -o yaml`` shows it: :func:`k8s.store.object_json`
    and, for a route (or a BackendTrafficPolicy), Gateway API's ``status.parents``
    (``ancestors``) as ambit writes them on a cluster."""
    doc = object_json(entry)
    if entry.parents and entry.ref[0] in MERGED:
        doc["status"] = {**doc.get("status", {}), MERGED[entry.ref[0]]: parents_json(entry)}
    return doc


def status_of(entry: Entry, store: ObjectStore) -> Json | None:
    """The ``status`` ambit writes on ``entry``, or None when it writes none."""
    obj = entry.obj
    kind = entry.ref[0]
    if isinstance(obj, GatewayClass):
        ours = obj.name in WAYPOINT_CLASSES and entry.conditions
        return {"conditions": _conditions(entry.conditions)} if ours else None
    if isinstance(obj, Gateway):
        if obj.gateway_class not in WAYPOINT_CLASSES or not entry.conditions:
            return None
        status: Json = {"conditions": _conditions(entry.conditions)}
        addresses = _gateway_addresses(entry, store)
        if addresses:
            status["addresses"] = addresses
        return status
    if kind in MERGED:
        return {MERGED[kind]: parents_json(entry)}
    if kind in POLICY_KINDS:
        return {
            "conditions": _conditions(entry.conditions),
            "observedGeneration": entry.observed_generation,
        }
    if kind == "Service":
        return {"conditions": _conditions(entry.conditions)} if entry.conditions else None
    return None


def status_doc(entry: Entry, status: Json) -> StatusDoc:
    """``status`` as the document applied to ``entry``'s ``/status``."""
    kind, namespace, name = entry.ref
    metadata: Json = {"name": name, "uid": entry.obj.uid}
    if namespace:
        metadata["namespace"] = namespace
    info = kind_info(kind)
    served = info.served_kind if info is not None else kind
    document = {"apiVersion": api_version(entry), "kind": served, "metadata": metadata,
                "status": status}  # fmt: skip
    return StatusDoc(object_path(entry) + "/status", document, merge=MERGED.get(kind, ""))


def merge_parents(
    current: Mapping[str, Any], ours: Sequence[Json], key: str = "parents"
) -> list[Json]:
    """A route's ``status.parents`` (``key``: or a policy's ``ancestors``) to apply: the
    entries of other controllers as the object (``current``, as read) has them, then
    ambit's (an entry ambit no longer writes goes)."""
    parents = (current.get("status") or {}).get(key) or []
    others = [
        p for p in parents if isinstance(p, dict) and p.get("controllerName") != CONTROLLER_NAME
    ]
    return [*others, *ours]


def same_parents(a: Sequence[Json], b: Sequence[Json]) -> bool:
    """The same entries, in any order."""

    def norm(items: Sequence[Json]) -> list[str]:
        return sorted(json.dumps(p, sort_keys=True) for p in items)

    return norm(a) == norm(b)


def event_problems(entry: Entry) -> list[tuple[str, str]]:
    """The (reason, message) of each of ``entry``'s conditions that is a problem an
    operator must see: one of :data:`EVENT_CONDITIONS`, False."""
    return [
        (c.reason, c.message)
        for c in entry.conditions
        if c.type in EVENT_CONDITIONS and c.status == "False"
    ]
