"""The ``ambit.io/LocalReplies`` condition, pure: which objects the waypoints' local
replies (Envoy's response flags) are about, and what their status says.

The waypoints count every answer in ``istio_requests_total`` with its ``response_flags``
(:mod:`mesh.traffic_graph`: :func:`~mesh.traffic_graph.flags_by_service`). Those series
name the destination Service, not the object that made the answer, so each object gets
the flags of the Services it configures that it can cause (:data:`FLAGS_OF_KIND`):

- an HTTPRoute or GRPCRoute (``parentRefs`` to a Service): every flag of that Service
  but ``DC`` (the caller left: nothing the route did);
- a DestinationRule (``host``): ``UO`` (connection pool), ``UH`` (every endpoint
  ejected), ``URX`` (``maxRetries``);
- an XBackendTrafficPolicy (``targetRefs``): ``URX`` (the retry budget);
- a FaultInjection named by a route rule's ``ExtensionRef``: ``FI``, ``DI``, for the
  Services that route is for; a LocalRateLimit likewise: ``RL``.

The condition is there once an object's Services had a local reply it can cause: True,
reason ``ResponseFlags``, with the counts of the last window in its message ("last 5m at
waypoint shop/waypoint: 80 UO (overflow: circuit open), 3 URX (retries exhausted)"); then
False, reason ``NoResponseFlags``, once the window holds none. An object never concerned
has none. Counts are rounded to two significant digits and the message is renewed at
most every ``hold`` seconds (:class:`Renewal`), so a busy Service does not make a status
write per scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from k8s.manifests import GRPCRoute, HTTPRoute, K8sObject
from k8s.store import Condition, ObjectRef, ref_of
from k8s.traffic_manifests import BackendTrafficPolicy, DestinationRule
from k8s.translate_traffic import service_of_host
from mesh.model_traffic import EXTENSION_GROUP
from mesh.traffic_graph import ServiceFlags, ServiceRef

CONDITION_LOCAL_REPLIES: Final = "ambit.io/LocalReplies"
REASON_FLAGS: Final = "ResponseFlags"
REASON_NONE: Final = "NoResponseFlags"
ALL: Final = "*"
FLAGS_OF_KIND: Final[Mapping[str, frozenset[str]]] = {
    "HTTPRoute": frozenset({ALL}),
    "GRPCRoute": frozenset({ALL}),
    "DestinationRule": frozenset({"UO", "UH", "URX"}),
    "BackendTrafficPolicy": frozenset({"URX"}),
    "FaultInjection": frozenset({"FI", "DI"}),
    "LocalRateLimit": frozenset({"RL"}),
}
KINDS: Final = tuple(FLAGS_OF_KIND)
# Flags of what the caller did, not of a reply the waypoint made: never an object's.
CALLERS_FLAGS: Final = frozenset({"DC"})
# Envoy's flags in words, as Istio's docs give them.
FLAG_WORDS: Final = {
    "UO": "overflow: circuit open", "URX": "retries exhausted", "UH": "no healthy upstream",
    "FI": "fault injected", "DI": "delay injected", "RL": "rate limited",
    "UT": "upstream timeout", "NR": "no route", "UF": "upstream connect failure",
    "UC": "upstream connection termination", "UR": "upstream reset",
    "UPE": "upstream protocol error", "DC": "downstream connection termination",
    "DPE": "downstream protocol error", "SI": "stream idle timeout", "DT": "duration timeout",
    "LR": "local reset", "IH": "invalid headers", "NC": "no cluster",
}  # fmt: skip


def services_of(obj: K8sObject, routes: Iterable[K8sObject] = ()) -> list[ServiceRef]:
    """The Services ``obj`` configures; for a FaultInjection or LocalRateLimit, those of
    the ``routes`` whose rules name it through an ``ExtensionRef``."""
    if isinstance(obj, HTTPRoute | GRPCRoute):
        return list(dict.fromkeys(
            (p.namespace or obj.namespace, p.name)
            for p in obj.parent_refs if (p.group, p.kind) == ("", "Service")
        ))  # fmt: skip
    if isinstance(obj, DestinationRule):
        key = service_of_host(obj.host, obj.namespace)
        return [tuple(key.split("/", 1))] if key is not None else []  # type: ignore[list-item]
    if isinstance(obj, BackendTrafficPolicy):
        return list(dict.fromkeys(
            (obj.namespace, t.name) for t in obj.target_refs if (t.group, t.kind) == ("", "Service")
        ))  # fmt: skip
    kind = type(obj).__name__
    found: list[ServiceRef] = []
    for route in routes:
        if route.namespace == obj.namespace and _names(route, kind, obj.name):
            found.extend(s for s in services_of(route) if s not in found)
    return found


def _names(route: K8sObject, kind: str, name: str) -> bool:
    """Whether a rule of ``route`` (or one of its backends) names ``kind`` ``name``."""
    if not isinstance(route, HTTPRoute | GRPCRoute):
        return False
    for rule in route.rules:
        filters = [*rule.filters, *(f for b in rule.backends for f in b.filters)]
        for f in filters:
            ext = f.extension
            if ext is not None and (ext.group, ext.kind, ext.name) == (EXTENSION_GROUP, kind, name):
                return True
    return False


def round2(n: int) -> int:
    """``n`` to two significant digits: 83 stays, 1,234 is 1,200."""
    if n < 100:
        return n
    scale: int = 10 ** (len(str(n)) - 2)
    return (n + scale // 2) // scale * scale


def flag_counts(
    kind: str, services: Iterable[ServiceRef], flags: Mapping[ServiceRef, ServiceFlags]
) -> tuple[dict[str, int], tuple[str, ...]]:
    """The flags ``kind`` can cause summed over ``services``, and the waypoints that
    counted them."""
    wanted = FLAGS_OF_KIND[kind]
    counts: dict[str, int] = {}
    waypoints: set[str] = set()
    for service in services:
        found = flags.get(service)
        if found is None:
            continue
        for flag, n in found.flags.items():
            if (flag in wanted or (ALL in wanted and flag not in CALLERS_FLAGS)) and n > 0:
                counts[flag] = counts.get(flag, 0) + n
                waypoints.update(found.waypoints)
    return counts, tuple(sorted(waypoints))


def message(counts: Mapping[str, int], waypoints: Iterable[str], window: str) -> str:
    """The condition's message: "last 5m at waypoint shop/waypoint: 80 UO (overflow:
    circuit open), 3 URX (retries exhausted)"."""
    if not counts:
        return f"no local reply with a response flag in the last {window}"
    at = ", ".join(waypoints)
    parts = [
        f"{round2(n)} {flag}" + (f" ({FLAG_WORDS[flag]})" if flag in FLAG_WORDS else "")
        for flag, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return f"last {window} at waypoint {at}: " + ", ".join(parts)


def local_replies(
    objects: Iterable[K8sObject],
    flags: Mapping[ServiceRef, ServiceFlags],
    window: str = "5m",
) -> dict[ObjectRef, Condition]:
    """The condition of each object of :data:`KINDS` that has local replies to report
    (True); the others have none here (:class:`Renewal` turns a condition that was True
    into False)."""
    objects = list(objects)
    routes = [o for o in objects if isinstance(o, HTTPRoute | GRPCRoute)]
    out = {}
    for obj in objects:
        kind = type(obj).__name__
        if kind not in FLAGS_OF_KIND:
            continue
        counts, waypoints = flag_counts(kind, services_of(obj, routes), flags)
        if counts:
            out[ref_of(obj)] = Condition(
                CONDITION_LOCAL_REPLIES, "True", REASON_FLAGS, message(counts, waypoints, window)
            )
    return out


def cleared(window: str) -> Condition:
    return Condition(CONDITION_LOCAL_REPLIES, "False", REASON_NONE, message({}, (), window))


@dataclass
class Renewal:
    """Which conditions to write now: a new or changed status at once; a changed message
    with the same status once ``hold`` seconds have passed since the last write of that
    object; an object that had one and has no more local replies gets the False one."""

    hold: float = 60.0
    window: str = "5m"
    _written: dict[ObjectRef, tuple[float, Condition]] = field(default_factory=dict)

    def due(
        self, now: float, wanted: Mapping[ObjectRef, Condition], present: Iterable[ObjectRef]
    ) -> dict[ObjectRef, Condition | None]:
        """What to write (None: take the condition off, the object is gone), and
        remember it as written."""
        present = set(present)
        out: dict[ObjectRef, Condition | None] = {}
        for ref in [r for r in self._written if r not in present]:
            del self._written[ref]
            out[ref] = None
        for ref in sorted(present & (wanted.keys() | self._written.keys())):
            new = wanted.get(ref) or cleared(self.window)
            last = self._written.get(ref)
            if last is not None:
                at, old = last
                if old == new or (old.status == new.status and now - at < self.hold):
                    continue
            self._written[ref] = (now, new)
            out[ref] = new
        return out
