"""The mesh model: the plain frozen dataclasses every ambit process shares.

Owns the versioned MeshSnapshot with its lookups, and Delta with ``diff`` / ``apply``
for incremental config updates. Workload and Service (ports and endpoints) are in
:mod:`mesh.model_workloads`, the policy objects (Authorization with Rule / Source /
Operation / Condition and TargetRef, PeerAuthentication, RequestAuthentication) in
:mod:`mesh.model_policy` and the shared checks in :mod:`mesh.model_checks`, all
re-exported here. The L7 parts (waypoint
Gateways, HTTP and gRPC routes, JWT rules) are in :mod:`mesh.model_l7`; the
snapshot holds them beside the rest. Pure data, no I/O.

JSON form: every class has ``to_json() -> dict`` and ``from_json(data)``. Keys
are the field names, all present; tuples become lists; string-keyed pair tuples
(labels, selectors, container ports) become objects; other pairs (an
Endpoint's ``[service_port, target_port]``) become two-element lists; ``None``
is ``null``. A Delta tags each upsert with its kind. Unknown, missing or
mistyped keys raise :class:`ModelError` naming the path (``Service.ports[0].port``).
Collections are normalised (labels sorted, snapshot entries sorted by key), so
equal content compares equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter, is_not, lt
from typing import Any, TypeAlias

from mesh.constants import SYSTEM_NAMESPACE
from mesh.jsonform import JsonForm, ModelError
from mesh.model_checks import Action as Action
from mesh.model_checks import Kind as Kind
from mesh.model_checks import MtlsMode as MtlsMode
from mesh.model_checks import Pairs as Pairs
from mesh.model_checks import Protocol as Protocol
from mesh.model_checks import selector_matches as selector_matches
from mesh.model_l7 import Gateway, GrpcRoute, HttpRoute
from mesh.model_l7 import JwtRule as JwtRule
from mesh.model_policy import GATEWAY_GROUP as GATEWAY_GROUP
from mesh.model_policy import TARGET_KINDS as TARGET_KINDS
from mesh.model_policy import Authorization as Authorization
from mesh.model_policy import Condition as Condition
from mesh.model_policy import Operation as Operation
from mesh.model_policy import PeerAuthentication as PeerAuthentication
from mesh.model_policy import RequestAuthentication as RequestAuthentication
from mesh.model_policy import Rule as Rule
from mesh.model_policy import Source as Source
from mesh.model_policy import TargetRef as TargetRef
from mesh.model_traffic import BackendTrafficPolicy, DestinationRule, FaultInjection, LocalRateLimit
from mesh.model_workloads import Endpoint as Endpoint
from mesh.model_workloads import Locality as Locality
from mesh.model_workloads import Service as Service
from mesh.model_workloads import ServicePort as ServicePort
from mesh.model_workloads import Workload as Workload

# --- Snapshots and deltas ------------------------------------------------------------------

Resource: TypeAlias = (
    Workload
    | Service
    | Authorization
    | PeerAuthentication
    | RequestAuthentication
    | Gateway
    | HttpRoute
    | GrpcRoute
    | DestinationRule
    | BackendTrafficPolicy
    | FaultInjection
    | LocalRateLimit
)
_TYPES: dict[str, type[Resource]] = {
    "workload": Workload,
    "service": Service,
    "authorization": Authorization,
    "peer_authentication": PeerAuthentication,
    "request_authentication": RequestAuthentication,
    "gateway": Gateway,
    "http_route": HttpRoute,
    "grpc_route": GrpcRoute,
    "destination_rule": DestinationRule,
    "backend_traffic_policy": BackendTrafficPolicy,
    "fault_injection": FaultInjection,
    "local_rate_limit": LocalRateLimit,
}
_COLLECTIONS: dict[Kind, str] = {
    "workload": "workloads",
    "service": "services",
    "authorization": "authorizations",
    "peer_authentication": "peer_authentications",
    "request_authentication": "request_authentications",
    "gateway": "gateways",
    "http_route": "http_routes",
    "grpc_route": "grpc_routes",
    "destination_rule": "destination_rules",
    "backend_traffic_policy": "backend_traffic_policies",
    "fault_injection": "fault_injections",
    "local_rate_limit": "local_rate_limits",
}

_key = attrgetter("key")


@dataclass(frozen=True)
class MeshSnapshot(JsonForm):
    """Everything a proxy needs, at one version. Entries are kept sorted by key; keys are unique."""

    version: int
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    authorizations: tuple[Authorization, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    request_authentications: tuple[RequestAuthentication, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    http_routes: tuple[HttpRoute, ...] = ()
    grpc_routes: tuple[GrpcRoute, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    backend_traffic_policies: tuple[BackendTrafficPolicy, ...] = ()
    fault_injections: tuple[FaultInjection, ...] = ()
    local_rate_limits: tuple[LocalRateLimit, ...] = ()

    def __post_init__(self) -> None:
        for name in _COLLECTIONS.values():
            object.__setattr__(self, name, _sorted_unique(self.version, getattr(self, name)))

    @classmethod
    def from_resources(cls, version: int, resources: Iterable[Resource]) -> MeshSnapshot:
        groups: dict[str, list[Any]] = {name: [] for name in _COLLECTIONS.values()}
        for r in resources:
            groups[_COLLECTIONS[r.kind]].append(r)
        return cls(version, **{name: tuple(entries) for name, entries in groups.items()})

    def restricted(
        self,
        *,
        workloads: Iterable[Workload] | None = None,
        services: Iterable[Service] | None = None,
        authorizations: Iterable[Authorization] | None = None,
        peer_authentications: Iterable[PeerAuthentication] | None = None,
        emptied: Iterable[str] = (),
    ) -> MeshSnapshot:
        """This snapshot, same version, with the collections given replaced (a proxy's view,
        :mod:`k8s.views`) and those named in ``emptied`` (field names) left empty. Only those
        are checked: a collection kept whole is this snapshot's own tuple, sorted and unique
        already, so a view that keeps the 5,000 workloads of a big mesh costs nothing for
        them."""
        given: dict[str, Iterable[Resource] | None] = {
            "workloads": workloads,
            "services": services,
            "authorizations": authorizations,
            "peer_authentications": peer_authentications,
        }
        emptied = frozenset(emptied)
        view = object.__new__(MeshSnapshot)  # __post_init__ would check every collection
        object.__setattr__(view, "version", self.version)
        for name in _COLLECTIONS.values():  # every collection: the L7 ones are kept whole
            entries = () if name in emptied else given.get(name)
            kept = getattr(self, name) if entries is None else _sorted_unique(self.version, entries)
            object.__setattr__(view, name, kept)
        return view

    def resources(self) -> Iterable[Resource]:
        for name in _COLLECTIONS.values():
            yield from getattr(self, name)

    @cached_property
    def _by_uid(self) -> dict[str, Workload]:
        return {w.uid: w for w in self.workloads}

    @cached_property
    def _by_ip(self) -> dict[str, Workload]:
        return {w.ip: w for w in reversed(self.workloads)}  # first by uid wins

    @cached_property
    def _by_key(self) -> dict[str, Service]:
        return {s.key: s for s in self.services}

    def service(self, key: str) -> Service | None:
        """The Service ``namespace/name``."""
        return self._by_key.get(key)

    @cached_property
    def _gateways_by_key(self) -> dict[str, Gateway]:
        return {g.key: g for g in self.gateways}

    def gateway(self, key: str) -> Gateway | None:
        """The waypoint ``namespace/name``."""
        return self._gateways_by_key.get(key)

    @cached_property
    def _destination_rules(self) -> dict[str, DestinationRule]:
        found: dict[str, DestinationRule] = {}
        for rule in sorted(self.destination_rules, key=lambda r: (r.created, r.key)):
            found.setdefault(rule.service, rule)  # the oldest counts, as in Istio
        return found

    def destination_rule(self, service: str) -> DestinationRule | None:
        """The DestinationRule for the Service ``namespace/name``: the oldest of those
        whose host names it."""
        return self._destination_rules.get(service)

    @cached_property
    def _traffic_policies(self) -> dict[str, BackendTrafficPolicy]:
        found: dict[str, BackendTrafficPolicy] = {}
        for policy in sorted(self.backend_traffic_policies, key=lambda p: (p.created, p.key)):
            for service in policy.services:
                found.setdefault(service, policy)  # the oldest counts
        return found

    def backend_traffic_policy(self, service: str) -> BackendTrafficPolicy | None:
        """The BackendTrafficPolicy targeting the Service ``namespace/name``: the oldest."""
        return self._traffic_policies.get(service)

    @cached_property
    def _extensions(self) -> dict[tuple[str, str], FaultInjection | LocalRateLimit]:
        found: dict[tuple[str, str], FaultInjection | LocalRateLimit] = {}
        for f in self.fault_injections:
            found["FaultInjection", f.key] = f
        for limit in self.local_rate_limits:
            found["LocalRateLimit", limit.key] = limit
        return found

    def extension(self, kind: str, key: str) -> FaultInjection | LocalRateLimit | None:
        """ambit's filter object ``kind`` ``namespace/name``, as an ExtensionRef names it."""
        return self._extensions.get((kind, key))

    @cached_property
    def _by_vip(self) -> dict[str, Service]:
        return {s.vip: s for s in reversed(self.services)}

    def workload(self, uid: str) -> Workload | None:
        return self._by_uid.get(uid)

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def service_by_vip(self, ip: str) -> Service | None:
        return self._by_vip.get(ip)

    def workloads_on_node(self, node: str) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.node == node)

    def policies_for(self, workload: Workload) -> tuple[Authorization, ...]:
        """The AuthorizationPolicies selecting ``workload`` (its namespace's and the root's).

        Selection depends only on the namespace and labels, and the snapshot never
        changes, so it is computed once per (namespace, labels) and remembered."""
        key = (workload.namespace, workload.labels)
        found = self._policies_by_selection.get(key)
        if found is None:
            found = tuple(a for a in self.authorizations if a.applies_to(workload))
            self._policies_by_selection[key] = found
        return found

    @cached_property
    def _policies_by_selection(self) -> dict[tuple[str, Pairs], tuple[Authorization, ...]]:
        return {}

    @cached_property
    def _service_by_endpoint(self) -> dict[tuple[str, int], Service]:
        index: dict[tuple[str, int], Service] = {}
        for service in self.services:  # sorted by key: the first one wins
            for endpoint in service.endpoints:
                for _, target in endpoint.ports:
                    index.setdefault((endpoint.workload_uid, target), service)
        return index

    def service_of_endpoint(self, uid: str, port: int) -> Service | None:
        """The Service whose endpoint ``uid`` serves target ``port`` (what inbound metrics
        report); the first by key when several do."""
        return self._service_by_endpoint.get((uid, port))

    def peer_authentication_for(self, workload: Workload) -> tuple[PeerAuthentication, ...]:
        """The PeerAuthentications that apply, most specific first: those of the workload's
        namespace selecting it by label, then its namespace-wide ones, then the mesh-wide ones
        (root namespace, no selector). The first whose mode is not UNSET decides."""
        own = [p for p in self.peer_authentications if p.namespace == workload.namespace]
        by_label = [
            p
            for p in own
            if p.selector is not None and selector_matches(p.selector, workload.labels)
        ]
        namespace_wide = [p for p in own if p.selector is None]
        mesh_wide = [
            p
            for p in self.peer_authentications
            if p.namespace == SYSTEM_NAMESPACE and p.selector is None and p not in namespace_wide
        ]
        return (*by_label, *namespace_wide, *mesh_wide)


def _sorted_unique(version: int, entries: Iterable[Resource]) -> tuple[Resource, ...]:
    """``entries`` sorted by key; :class:`ModelError` if two have the same key."""
    entries = tuple(entries)
    keys = list(map(_key, entries))
    # One pass when the entries come sorted (as the control plane builds them): strictly
    # increasing keys are sorted and unique. Anything else is sorted, then checked.
    if not all(map(lt, keys, itertools.islice(keys, 1, None))):
        entries = tuple(sorted(entries, key=_key))
        for a, b in itertools.pairwise(entries):
            if a.key == b.key:
                raise ModelError(f"snapshot v{version}: two {a.kind}s with key {a.key}")
    return entries


@dataclass(frozen=True)
class Delta(JsonForm):
    """What turns snapshot ``from_version`` into ``to_version``: entries added or replaced
    (``upserts``) and the ``(kind, key)`` of entries removed.

    JSON: ``removes`` is a list of ``[kind, key]``; each upsert is ``{"kind", "value"}``.
    """

    from_version: int
    to_version: int
    upserts: tuple[Resource, ...] = ()
    removes: tuple[tuple[Kind, str], ...] = ()


def diff(old: MeshSnapshot, new: MeshSnapshot) -> Delta:
    """The delta that turns ``old`` into ``new``: ``apply(old, diff(old, new)) == new``.

    Entries are compared by identity first: consecutive snapshots from the control plane
    share every entry that did not change, so only the others are compared by value.
    """
    upserts: list[Resource] = []
    removes: list[tuple[Kind, str]] = []
    for name in _COLLECTIONS.values():
        before, after = _unshared(getattr(old, name), getattr(new, name))
        kept = {id(r) for r in before}.intersection(map(id, after))
        gone = {r.key: r for r in before if id(r) not in kept}
        for r in after:
            if id(r) not in kept and gone.pop(r.key, None) != r:
                upserts.append(r)
        removes.extend((r.kind, key) for key, r in gone.items())
    upserts.sort(key=lambda r: (r.kind, r.key))
    return Delta(old.version, new.version, tuple(upserts), tuple(sorted(removes)))


def _unshared(
    before: tuple[Resource, ...], after: tuple[Resource, ...]
) -> tuple[tuple[Resource, ...], tuple[Resource, ...]]:
    """``before`` and ``after`` without the longest run of shared entries at either end
    (found without a Python-level loop: a change usually leaves most of a collection alone)."""
    if before is after:
        return (), ()
    shortest = min(len(before), len(after))
    head = next(itertools.compress(itertools.count(), map(is_not, before, after)), shortest)
    tail = next(
        itertools.compress(itertools.count(), map(is_not, reversed(before), reversed(after))),
        shortest,
    )
    tail = min(tail, shortest - head)
    return before[head : len(before) - tail], after[head : len(after) - tail]


def apply(snapshot: MeshSnapshot, delta: Delta) -> MeshSnapshot:
    """``snapshot`` with ``delta`` applied; the delta must start from the snapshot's version."""
    span = f"delta v{delta.from_version}->v{delta.to_version}"
    if delta.from_version != snapshot.version:
        raise ModelError(
            f"{span} does not apply to snapshot v{snapshot.version};"
            " ask the control plane for a full snapshot"
        )
    entries = _index(snapshot)
    for kind, key in delta.removes:
        if entries.pop((kind, key), None) is None:
            raise ModelError(f"{span} removes {kind} {key}, absent from v{snapshot.version}")
    for r in delta.upserts:
        entries[(r.kind, r.key)] = r
    return MeshSnapshot.from_resources(delta.to_version, entries.values())


def _index(snapshot: MeshSnapshot) -> dict[tuple[Kind, str], Resource]:
    return {(r.kind, r.key): r for r in snapshot.resources()}
