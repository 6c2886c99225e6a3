"""What each proxy is sent: its view of the mesh model, pure.

A view is a :class:`~mesh.model.MeshSnapshot` at the snapshot's version holding only
the entries one proxy looks up. Its entries are the snapshot's own objects, and a
collection it keeps whole is the snapshot's own tuple, so :func:`mesh.model.diff`
between the views of two consecutive snapshots costs what changed, as it does between
the snapshots. :class:`Views` computes each view of one snapshot once, however many
proxies subscribe to it; :func:`ztunnel_view` and :func:`waypoint_view` are the same
for one view.

**A ztunnel of node N** (``("ztunnel", N)``) gets what ztunnel looks up:

- *every Service.* Outbound planning (:mod:`ztunnel.plan`) resolves any destination
  address as a Service VIP first, and a Service's ``waypoint`` by key. A Service
  without endpoints is still needed: known, its traffic is refused with the reason
  (no endpoint, no such port); unknown, it would be passed through as a plain
  address. One bound to a waypoint needs no endpoints of its own.
- *every workload.* Any pod may be dialled by its IP: a meshed one needs its identity
  (HBONE, not plaintext into a STRICT pod), an unmeshed one is passed through but
  named in metrics. Inbound (:mod:`ztunnel.inbound`) names the source of every
  connection, HBONE or plaintext, by its address (the metrics' and access log's
  source labels), and endpoints and a waypoint's pods are found by uid.
- *the policies of its own meshed pods,* those it captures: for each of them, the
  AuthorizationPolicies :meth:`~mesh.model.MeshSnapshot.policies_for` finds
  (namespace-wide ones of its namespace, those whose selector selects it, the root
  namespace's (``ambit-system``) that apply to it) and the PeerAuthentications
  :meth:`~mesh.model.MeshSnapshot.peer_authentication_for` finds (its namespace's that
  select it or have no selector, the root's without a selector). Never one meant for
  waypoints (:attr:`~mesh.model.Authorization.for_waypoint`): ztunnel does not apply
  them. The view asks only the policies of the pod's namespace and the root's, once
  per namespace and labels: the same answer, without a pass over every policy per pod.

- *no traffic policy:* DestinationRules, BackendTrafficPolicies, FaultInjections and
  LocalRateLimits are a waypoint's, so a change to them never wakes a ztunnel.

So a ztunnel's view leaves out policies, but those are what changes often and
what concerns one node: a policy that selects only node-2's pods is neither sent to,
nor wakes up, node-1's ztunnel. Every lookup ztunnel makes for its pods gets the same
answer from the view as from the snapshot (``tests/unit/test_views.py`` checks it).

**A waypoint of namespace N** (``("waypoint", N)``) gets its namespace: N's workloads
and Services, the Services of other namespaces bound to a waypoint of N
(``Service.waypoint`` naming a Service in N: a waypoint routes their traffic), the
workloads that are endpoints of those Services, and every AuthorizationPolicy and
PeerAuthentication of N and of the root namespace, the waypoint-only ones
(``targetRefs``, AUDIT) included. Gateways, HTTPRoutes, GRPCRoutes and
RequestAuthentications are sent whole (the waypoint compiles the routes attached to its
Services and binds what its ``targetRefs`` name), as are DestinationRules,
BackendTrafficPolicies, FaultInjections and LocalRateLimits (what its Services' traffic
and its routes' ``ExtensionRef`` filters are given), and the Services in other
namespaces those routes send to (backends, mirrors) come with their endpoints' workloads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import Final, TypeAlias, TypeVar

from mesh.config_stream import Role
from mesh.constants import SYSTEM_NAMESPACE
from mesh.model import (
    Authorization,
    MeshSnapshot,
    Pairs,
    PeerAuthentication,
    Resource,
    Service,
    Workload,
    selector_matches,
)
from mesh.model_l7 import BackendRef, GrpcRoute, HttpRoute

# The collections only a waypoint uses (mesh.model_traffic's kinds).
WAYPOINT_ONLY: Final = (
    "destination_rules", "backend_traffic_policies", "fault_injections", "local_rate_limits",
)  # fmt: skip

ViewKey: TypeAlias = tuple[Role, str]
"""Which view: ``("ztunnel", node)`` or ``("waypoint", namespace)``."""

R = TypeVar("R", bound=Resource)
_key = attrgetter("key")


def ztunnel_view(snapshot: MeshSnapshot, node: str) -> MeshSnapshot:
    """What the ztunnel of ``node`` needs of ``snapshot`` (the module docstring says why)."""
    return Views(snapshot).get(("ztunnel", node))


def waypoint_view(snapshot: MeshSnapshot, namespace: str) -> MeshSnapshot:
    """What a waypoint of ``namespace`` needs of ``snapshot``."""
    return Views(snapshot).get(("waypoint", namespace))


@dataclass(frozen=True)
class _Namespaces:
    """A snapshot's entries by namespace, each list in the snapshot's (key) order."""

    workloads: dict[str, list[Workload]]
    services: dict[str, list[Service]]
    bound: dict[str, list[Service]]  # Services bound to a waypoint of another namespace
    authorizations: dict[str, list[Authorization]]
    peer_authentications: dict[str, list[PeerAuthentication]]


class Views:
    """The views of one snapshot, each computed on first ask and kept: the config server
    makes one per published snapshot and asks it for every key with a subscriber. The
    indexes views share (meshed pods by node, entries by namespace) are built once too,
    and which policies select which pods is carried over from the ``previous`` snapshot's
    views while the policies are the same objects."""

    def __init__(self, snapshot: MeshSnapshot, *, previous: Views | None = None) -> None:
        self.snapshot = snapshot
        self._views: dict[ViewKey, MeshSnapshot] = {}
        # The policies that apply to a (namespace, labels), by id: still true of the next
        # snapshot if it has the same policies (the control plane's translator keeps a
        # collection that did not change as the same tuple of the same objects). Only
        # what this snapshot's pods use is carried on, so pods that come and go with new
        # labels (a Deployment's pod-template-hash) leave nothing behind.
        self._selected: dict[tuple[str, Pairs], tuple[list[int], list[int]]] = {}
        self._carried: dict[tuple[str, Pairs], tuple[list[int], list[int]]] = {}
        if previous is not None and _same_policies(previous.snapshot, snapshot):
            self._carried = previous._selected

    def get(self, key: ViewKey) -> MeshSnapshot:
        view = self._views.get(key)
        if view is None:
            role, name = key
            if role == "ztunnel":
                view = self._ztunnel(name)
            elif role == "waypoint":
                view = self._waypoint(name)
            else:
                raise ValueError(f"no view for role {role!r}")
            self._views[key] = view
        return view

    # ---- ztunnel ---------------------------------------------------------------------

    @cached_property
    def _meshed_by_node(self) -> dict[str, list[Workload]]:
        by_node: defaultdict[str, list[Workload]] = defaultdict(list)
        for w in self.snapshot.workloads:
            if w.meshed and not w.native_tunnel:  # a waypoint's pod is no ztunnel's
                by_node[w.node].append(w)
        return by_node

    def _ztunnel(self, node: str) -> MeshSnapshot:
        snapshot = self.snapshot
        # Which policies apply depends only on a pod's namespace and labels: once per pair.
        selections = {(w.namespace, w.labels): w for w in self._meshed_by_node.get(node, ())}
        authorizations: set[int] = set()
        peer_authentications: set[int] = set()
        for selection, pod in selections.items():
            found = self._selected.get(selection)
            if found is None:
                found = self._carried.get(selection)
                if found is None:
                    found = self._select(pod)
                self._selected[selection] = found
            authorizations.update(found[0])
            peer_authentications.update(found[1])
        return snapshot.restricted(
            authorizations=_kept(snapshot.authorizations, authorizations),
            peer_authentications=_kept(snapshot.peer_authentications, peer_authentications),
            emptied=WAYPOINT_ONLY,
        )

    def _select(self, pod: Workload) -> tuple[list[int], list[int]]:
        """The ids of the AuthorizationPolicies and PeerAuthentications that apply to
        ``pod``: what :meth:`MeshSnapshot.policies_for` and
        :meth:`MeshSnapshot.peer_authentication_for` find, asked of its namespace's and the
        root namespace's only."""
        index = self._namespaces
        scopes = dict.fromkeys((pod.namespace, SYSTEM_NAMESPACE))
        authorizations = [
            id(a) for n in scopes for a in index.authorizations.get(n, ()) if a.applies_to(pod)
        ]
        peer_authentications = [
            id(p)
            for p in index.peer_authentications.get(pod.namespace, ())
            if selector_matches(p.selector, pod.labels)
        ]
        if pod.namespace != SYSTEM_NAMESPACE:  # the mesh-wide ones: the root's, no selector
            peer_authentications += [
                id(p)
                for p in index.peer_authentications.get(SYSTEM_NAMESPACE, ())
                if p.selector is None
            ]
        return authorizations, peer_authentications

    # ---- waypoint --------------------------------------------------------------------

    @cached_property
    def _namespaces(self) -> _Namespaces:
        snapshot = self.snapshot
        bound: defaultdict[str, list[Service]] = defaultdict(list)
        for service in snapshot.services:
            if service.waypoint is not None:
                namespace = service.waypoint.partition("/")[0]
                if namespace != service.namespace:
                    bound[namespace].append(service)
        return _Namespaces(
            workloads=_by_namespace(snapshot.workloads),
            services=_by_namespace(snapshot.services),
            bound=bound,
            authorizations=_by_namespace(snapshot.authorizations),
            peer_authentications=_by_namespace(snapshot.peer_authentications),
        )

    def _waypoint(self, namespace: str) -> MeshSnapshot:
        snapshot, index = self.snapshot, self._namespaces
        services = [*index.services.get(namespace, ()), *index.bound.get(namespace, ())]
        services += _route_backends(snapshot, services)
        workloads = {w.uid: w for w in index.workloads.get(namespace, ())}
        for service in services:
            for endpoint in service.endpoints:
                if endpoint.workload_uid not in workloads:
                    pod = snapshot.workload(endpoint.workload_uid)
                    if pod is not None:
                        workloads[pod.uid] = pod
        namespaces = dict.fromkeys((namespace, SYSTEM_NAMESPACE))
        return snapshot.restricted(
            workloads=_sorted(workloads.values()),
            services=_sorted(services),
            authorizations=_sorted(a for n in namespaces for a in index.authorizations.get(n, ())),
            peer_authentications=_sorted(
                p for n in namespaces for p in index.peer_authentications.get(n, ())
            ),
        )


def _route_backends(snapshot: MeshSnapshot, services: Sequence[Service]) -> list[Service]:
    """The Services in other namespaces that routes attached to ``services`` send to (their
    backends and mirrors): a waypoint must know their endpoints to route there."""
    keys = {s.key for s in services}
    wanted: set[str] = set()
    routes: list[HttpRoute | GrpcRoute] = [*snapshot.http_routes, *snapshot.grpc_routes]
    for route in routes:
        attached = any(
            p.group == "" and p.kind == "Service"
            and f"{p.namespace or route.namespace}/{p.name}" in keys
            for p in route.parents
        )  # fmt: skip
        if not attached:
            continue
        for rule in route.rules:
            refs: list[BackendRef] = [*rule.backends]
            for f in (*rule.filters, *(f for b in rule.backends for f in b.filters)):
                if f.mirror is not None:
                    refs.append(f.mirror.backend)
            wanted.update(
                f"{b.namespace or route.namespace}/{b.name}"
                for b in refs
                if b.group == "" and b.kind == "Service"
            )
    found = (snapshot.service(key) for key in sorted(wanted - keys))
    return [s for s in found if s is not None]


def _same_policies(a: MeshSnapshot, b: MeshSnapshot) -> bool:
    return a.authorizations is b.authorizations and a.peer_authentications is b.peer_authentications


def _kept(entries: tuple[R, ...], ids: set[int]) -> tuple[R, ...]:
    """The entries whose id is in ``ids``, in order; ``entries`` itself when that is all
    of them (so a diff sees the same tuple)."""
    if len(ids) == len(entries):
        return entries
    return tuple(e for e in entries if id(e) in ids)


def _sorted(entries: Iterable[R]) -> tuple[R, ...]:
    return tuple(sorted(entries, key=_key))


def _by_namespace(entries: Sequence[R]) -> dict[str, list[R]]:
    grouped: defaultdict[str, list[R]] = defaultdict(list)
    for entry in entries:
        grouped[entry.namespace].append(entry)
    return grouped
