"""Kubernetes objects -> the mesh model, pure and incremental.

Owns the meaning of the objects for the mesh: which pods are workloads and which of
them are in the mesh (``ambit.io/dataplane-mode`` on the Namespace or the Pod), what
a Service's endpoints are (:mod:`k8s.endpoints`, named targetPorts resolved per pod),
how Istio's AuthorizationPolicy schema maps to L4 rules (fields ztunnel cannot enforce
are recorded in ``l7``, never dropped silently), and what happens when objects that
are valid one by one conflict.

:class:`Translator` keeps the objects with indexes over them and turns each batch of
changes into the next :class:`Translation`, recomputing only what the batch touches;
:func:`translate` is the same code given every object at once. A conflict never stops
translation: of two pods with one IP, or two Services with one cluster IP, the object
created first keeps the address (:mod:`k8s.claims`) and the others are left out of the
snapshot; every object involved gets a :class:`Problem` in ``Translation.problems``:
``IPConflict`` / ``ClusterIPConflict`` on those left out, ``IPConflictKept`` /
``ClusterIPConflictKept`` on the one that keeps the address, so looking at either
shows the conflict. Everything else takes effect.

The L7 kinds (:mod:`k8s.translate_l7`, :mod:`k8s.translate_traffic`): Gateways of a
waypoint class become waypoints; routes, RequestAuthentications and the traffic kinds
are carried as read; ``use-waypoint`` labels set ``Service.waypoint`` and
``Workload.waypoint`` when that waypoint runs, a Problem (``WaypointNotFound``...) if not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from k8s import manifests as m
from k8s.claims import Claims, Contest, rank
from k8s.endpoints import selects
from k8s.indexes import Entries, SetIndex
from k8s.problems import Problem as Problem  # re-exported: translation's report
from k8s.store import ObjectRef, ref_of
from k8s.translate_l7 import (
    grpc_route,
    http_route,
    request_authentication,
    route_problems,
    route_targets,
    use_waypoint,
    waypoint,
)
from k8s.translate_parts import CLUSTER_IP_CONFLICT as CLUSTER_IP_CONFLICT
from k8s.translate_parts import CLUSTER_IP_CONFLICT_KEPT as CLUSTER_IP_CONFLICT_KEPT
from k8s.translate_parts import CONFLICT_REASONS as CONFLICT_REASONS
from k8s.translate_parts import IP_CONFLICT as IP_CONFLICT
from k8s.translate_parts import IP_CONFLICT_KEPT as IP_CONFLICT_KEPT
from k8s.translate_parts import (
    _conflict,
    _cyclic_gc_paused,
    _endpoint,
    _key,
    _pod_address,
    _ports,
    _service_address,
    _typed,
    _workload,
)
from k8s.translate_parts import in_mesh as in_mesh
from k8s.translate_parts import meshed_by_labels as meshed_by_labels
from k8s.translate_parts import native_tunnel as native_tunnel
from k8s.translate_parts import workload_uid as workload_uid
from k8s.translate_policy import authorization as authorization
from k8s.translate_policy import peer_authentication
from k8s.translate_policy import ztunnel_acceptance as ztunnel_acceptance
from k8s.translate_slices import Topology, selectorless, slice_endpoints
from k8s.translate_traffic import KINDS as TRAFFIC_KINDS
from k8s.translate_traffic import TrafficPolicies
from k8s.translate_waypoints import WaypointBinding, _Batch
from mesh import model, model_l7, route_status
from mesh.constants import DEFAULT_TRUST_DOMAIN, LABEL_GATEWAY_NAME


@dataclass(frozen=True)
class Translation:
    """The mesh as the objects describe it, and what is wrong with which object
    (``problems`` lists only objects that have one)."""

    snapshot: model.MeshSnapshot
    problems: Mapping[ObjectRef, tuple[Problem, ...]]


def translate(
    objects: Iterable[m.K8sObject], *, trust_domain: str = DEFAULT_TRUST_DOMAIN, version: int
) -> Translation:
    """The mesh as ``objects`` describe it, at ``version``: a new :class:`Translator` given
    every object in one batch (of two with the same :func:`~k8s.store.ref_of`, the later counts).

    Pods become workloads once they have an IP (host-network and finished pods never do);
    Services need a selector and a cluster IP; policies keep their Istio meaning at L4.
    """
    return Translator(trust_domain=trust_domain, version=version).apply(objects)


Label: TypeAlias = tuple[str, str, str]  # (namespace, key, value)
_NAMED = ("Service", *TRAFFIC_KINDS)  # routes' targets, checked again when they come or go


class Translator(WaypointBinding):
    """Objects in, :class:`Translation`\\ s out, one per batch of changes.

    Holds the objects and indexes over them (pods by namespace and by label, Services by
    selector label, who holds each address) and every model entry built so far.
    :meth:`apply` recomputes only what a batch touches:

    - a Pod: its workload, and its endpoint in the Services of its namespace whose
      selector matches it before or after the change;
    - a Service: that Service, its endpoints found through the pods' label index (or,
      without a selector, its EndpointSlices); an EndpointSlice: its selectorless Service;
    - a Node's zone or region: the workloads of its pods (their locality);
    - a Namespace's labels: the workloads of its pods (whether they are meshed) and the
      waypoint of its Services;
    - a Gateway: also the workloads of the pods labelled with its name (a waypoint's pods
      speak HBONE themselves: ``native_tunnel``);
    - a policy, a route, a Gateway: that object (and, for a Gateway, whoever uses it as
      a waypoint; for a Service or Gateway created or removed, the routes naming it);
    - who holds an address (a conflict won, lost or resolved): the objects concerned;
    - a waypoint that starts or stops running (its Service gains its first endpoint in
      the mesh or loses its last): whoever uses it.

    Entries that did not change are the same objects in the next snapshot, so
    :func:`mesh.model.diff` of two consecutive snapshots costs what the change does.
    """

    def __init__(self, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, version: int = 1) -> None:
        self.trust_domain = trust_domain
        self._version = version  # of the next snapshot
        self._translation: Translation | None = None
        self._objects: dict[ObjectRef, m.K8sObject] = {}
        self._pods_of: SetIndex[str, ObjectRef] = SetIndex()  # by namespace
        self._pods_by_label: SetIndex[Label, ObjectRef] = SetIndex()
        self._services_of: SetIndex[str, ObjectRef] = SetIndex()  # by namespace
        self._services_by_label: SetIndex[Label, ObjectRef] = SetIndex()  # by selector pair
        self._topology = Topology()  # EndpointSlices and Nodes
        self._pod_ips: Claims[ObjectRef] = Claims()
        self._cluster_ips: Claims[ObjectRef] = Claims()
        self._endpoints: dict[ObjectRef, dict[str, model.Endpoint]] = {}  # of model Services
        # Who names which waypoint in their own labels (Namespaces, Services, Pods), and
        # whether each waypoint so named runs; what each route refers to.
        self._waypoint_users: SetIndex[str, ObjectRef] = SetIndex()
        self._waypoint_named: dict[ObjectRef, str] = {}  # the other way round
        self._waypoint_ready: dict[str, bool] = {}
        self._route_targets: SetIndex[ObjectRef, ObjectRef] = SetIndex()
        # Problems by their source: address conflicts, waypoints, routes and Gateways.
        self._conflicts: dict[ObjectRef, tuple[Problem, ...]] = {}
        self._waypoint_problems: dict[ObjectRef, tuple[Problem, ...]] = {}
        self._l7_problems: dict[ObjectRef, tuple[Problem, ...]] = {}
        self._problems_changed = False
        self._workloads = Entries[model.Workload]()
        self._services = Entries[model.Service]()
        self._authorizations = Entries[model.Authorization]()
        self._peer_authentications = Entries[model.PeerAuthentication]()
        self._request_authentications = Entries[model.RequestAuthentication]()
        self._gateways = Entries[model_l7.Gateway]()
        self._http_routes = Entries[model_l7.HttpRoute]()
        self._grpc_routes = Entries[model_l7.GrpcRoute]()
        self._traffic = TrafficPolicies()  # DestinationRules... (k8s.translate_traffic)

    @property
    def translation(self) -> Translation | None:
        """The last :class:`Translation`, None before the first :meth:`apply`."""
        return self._translation

    def objects(self) -> Mapping[ObjectRef, m.K8sObject]:
        """Every object held now (a read-only view)."""
        return MappingProxyType(self._objects)

    def apply(
        self, upserts: Iterable[m.K8sObject] = (), removes: Iterable[ObjectRef] = ()
    ) -> Translation:
        """Remove ``removes`` (refs not held are ignored), then add or replace ``upserts``
        (of two with one ref, the later counts), and return the next Translation. Its
        snapshot has the next version if the model changed; otherwise it is the previous
        snapshot itself."""
        with _cyclic_gc_paused():
            batch = _Batch()
            for ref in removes:
                self._put(ref, None, batch)
            for obj in upserts:
                self._put(ref_of(obj), obj, batch)
            self._settle(batch)
            self._rebuild(batch)
            return self._next()

    # --- taking changes in ----------------------------------------------------------------

    def _put(self, ref: ObjectRef, obj: m.K8sObject | None, batch: _Batch) -> None:
        old = self._objects.get(ref)
        if old is obj or old == obj:
            return
        if obj is None:
            del self._objects[ref]
        else:
            self._objects[ref] = obj
        kind, _, name = ref
        if kind in ("Namespace", "Service", "Pod"):
            self._relabel(ref, old, obj)
        if kind == "Gateway" or (kind in _NAMED and (old is None) != (obj is None)):
            batch.routes.update(self._route_targets.get(ref))
        if kind == "Pod":
            self._put_pod(ref, _typed(old, m.Pod), _typed(obj, m.Pod), batch)
        elif kind == "Service":
            self._put_service(ref, _typed(old, m.Service), _typed(obj, m.Service), batch)
        elif kind == "Namespace":
            before, after = _typed(old, m.Namespace), _typed(obj, m.Namespace)
            if (before and before.labels) != (after and after.labels):
                batch.workloads.update(self._pods_of.get(name))
                batch.waypoint_services.update(self._services_of.get(name))
                batch.namespaces.add(ref)
                batch.routes.update(self._route_targets.get(ref))  # allowedRoutes selectors
        elif kind == "EndpointSlice":  # endpoints of a Service without a selector only
            slices = self._topology.put_slice(
                ref, _typed(old, m.EndpointSlice), _typed(obj, m.EndpointSlice)
            )
            batch.services.update(r for r in slices if selectorless(self._objects.get(r)))
        elif kind == "Node":
            batch.workloads.update(self._topology.put_node(name, _typed(obj, m.Node)))
        elif kind == "AuthorizationPolicy":
            policy = _typed(obj, m.AuthorizationPolicy)
            self._authorizations.set(_key(ref), authorization(policy) if policy else None)
        elif kind == "PeerAuthentication":
            peer = _typed(obj, m.PeerAuthentication)
            self._peer_authentications.set(_key(ref), peer_authentication(peer) if peer else None)
        elif kind == "RequestAuthentication":
            auth = _typed(obj, m.RequestAuthentication)
            entry = request_authentication(auth) if auth else None
            self._request_authentications.set(_key(ref), entry)
        elif kind == "Gateway":
            gateway = _typed(obj, m.Gateway)
            entry_, problem = waypoint(gateway) if gateway else (None, None)
            self._gateways.set(_key(ref), entry_)
            self._set_problems(self._l7_problems, ref, (problem,) if problem else ())
            batch.gateways.add(_key(ref))
            # Its pods speak HBONE themselves while it is a waypoint (native_tunnel).
            batch.workloads.update(self._pods_by_label.get((ref[1], LABEL_GATEWAY_NAME, name)))
        elif kind in ("HTTPRoute", "GRPCRoute"):
            self._put_route(ref, old, obj, batch)
        elif kind in TRAFFIC_KINDS:
            self._traffic.put(ref, obj)

    def _relabel(self, ref: ObjectRef, old: m.K8sObject | None, new: m.K8sObject | None) -> None:
        """File the object under the waypoint its own labels name."""
        if old is not None and new is not None and old.labels == new.labels:
            return
        namespace = ref[2] if ref[0] == "Namespace" else ref[1]
        before = use_waypoint(old.labels, namespace) if old is not None else None
        after = use_waypoint(new.labels, namespace) if new is not None else None
        if before != after:
            if before is not None:
                self._waypoint_users.discard(before, ref)
                del self._waypoint_named[ref]
            if after is not None:
                self._waypoint_users.add(after, ref)
                self._waypoint_named[ref] = after

    def _put_route(
        self, ref: ObjectRef, old: m.K8sObject | None, new: m.K8sObject | None, b: _Batch
    ) -> None:
        before = route_targets(old) if isinstance(old, m.HTTPRoute | m.GRPCRoute) else set()
        after = route_targets(new) if isinstance(new, m.HTTPRoute | m.GRPCRoute) else set()
        for target in before - after:
            self._route_targets.discard(target, ref)
        for target in after - before:
            self._route_targets.add(target, ref)
        b.routes.add(ref)
        for target in before | after:  # routes beside it on a Service may (no longer) conflict
            b.routes.update(self._route_targets.get(target))
        if ref[0] == "HTTPRoute":
            route = _typed(new, m.HTTPRoute)
            self._http_routes.set(_key(ref), http_route(route) if route else None)
        else:
            grpc = _typed(new, m.GRPCRoute)
            self._grpc_routes.set(_key(ref), grpc_route(grpc) if grpc else None)

    def _put_pod(self, ref: ObjectRef, old: m.Pod | None, new: m.Pod | None, b: _Batch) -> None:
        b.pods.setdefault(ref, old)
        namespace = ref[1]
        if new is None:
            self._pods_of.discard(namespace, ref)
        elif old is None:
            self._pods_of.add(namespace, ref)
        before = old.node_name if old is not None else None
        if before != (after := new.node_name if new is not None else None):
            self._topology.move_pod(ref, before, after)
        if (old and old.labels) != (new and new.labels):
            for k, v in old.labels if old else ():
                self._pods_by_label.discard((namespace, k, v), ref)
            for k, v in new.labels if new else ():
                self._pods_by_label.add((namespace, k, v), ref)
        order = rank(new.creation_timestamp, *ref[1:]) if new else rank("", *ref[1:])
        self._pod_ips.claim(ref, _pod_address(new), order)

    def _put_service(
        self, ref: ObjectRef, old: m.Service | None, new: m.Service | None, b: _Batch
    ) -> None:
        b.services.add(ref)
        namespace = ref[1]
        if new is None:
            self._services_of.discard(namespace, ref)
        elif old is None:
            self._services_of.add(namespace, ref)
        if (old and old.selector) != (new and new.selector):
            for k, v in (old.selector if old else None) or ():
                self._services_by_label.discard((namespace, k, v), ref)
            for k, v in (new.selector if new else None) or ():
                self._services_by_label.add((namespace, k, v), ref)
        order = rank(new.creation_timestamp, *ref[1:]) if new else rank("", *ref[1:])
        self._cluster_ips.claim(ref, _service_address(new), order)

    def _settle(self, batch: _Batch) -> None:
        """Decide who holds the addresses claimed or released, and report conflicts."""
        affected, moved = self._pod_ips.settle()
        for ref in moved:
            batch.pods.setdefault(ref, _typed(self._objects.get(ref), m.Pod))
        for ref in affected:
            self._report(ref, self._pod_ips.contest(ref), "pod IP")
        affected, moved = self._cluster_ips.settle()
        batch.services.update(moved)
        for ref in affected:
            self._report(ref, self._cluster_ips.contest(ref), "cluster IP")

    def _report(self, ref: ObjectRef, contest: Contest[ObjectRef] | None, what: str) -> None:
        problems = (_conflict(ref, contest, what),) if contest is not None else ()
        self._set_problems(self._conflicts, ref, problems)

    # --- recomputing the model --------------------------------------------------------------

    def _rebuild(self, batch: _Batch) -> None:
        for ref in batch.workloads.union(batch.pods):
            pod = _typed(self._objects.get(ref), m.Pod)
            held = pod is not None and self._pod_ips.holds(ref)
            namespace = _typed(self._objects.get(("Namespace", "", ref[1])), m.Namespace)
            old = self._workloads.get(_key(ref))  # its waypoint is decided after
            bound = old.waypoint if old is not None else None
            workload = None
            if pod is not None and held:
                tunnel = native_tunnel(pod, self._is_waypoint)
                where = self._topology.localities.get(pod.node_name)
                workload = _workload(
                    pod, namespace, self.trust_domain, bound, tunnel=tunnel, locality=where
                )
            self._workloads.set(_key(ref), workload)
        touched = set(batch.services)
        for ref, before in batch.pods.items():
            touched.update(self._move_endpoint(ref, before, batch.services))
        for ref in touched:
            svc = _typed(self._objects.get(ref), m.Service)
            if svc is None or not self._cluster_ips.holds(ref):
                self._endpoints.pop(ref, None)
                self._services.set(_key(ref), None)
                continue
            if ref in batch.services:
                self._endpoints[ref] = self._endpoints_of(svc)
            endpoints = self._endpoints[ref]
            current = self._services.get(_key(ref))  # its waypoint is decided after
            entry = model.Service.build(
                svc.name,
                svc.namespace,
                _service_address(svc) or "",
                _ports(svc),
                tuple(map(endpoints.__getitem__, sorted(endpoints))),
                current.waypoint if current is not None else None,
            )
            self._services.set(_key(ref), entry)
        self._bind_waypoints(batch, touched)
        for ref in touched:  # a Service that appeared, went or changed its ports
            batch.routes.update(self._route_targets.get(ref))
        self._check_routes(batch.routes)
        for ref, found in self._traffic.problems(touched, self._services.get).items():
            self._set_problems(self._l7_problems, ref, found)

    def _check_routes(self, refs: set[ObjectRef]) -> None:
        """The problems of the routes ``refs``, decided among every route beside them on a
        Service (``Conflicted``)."""
        if not refs:
            return
        context = set(refs)
        for ref in refs:
            route = self._objects.get(ref)
            if isinstance(route, m.HTTPRoute | m.GRPCRoute):
                for target in route_targets(route):
                    if target[0] == "Service":
                        context.update(self._route_targets.get(target))
        routes = [r for ref in sorted(context) if (r := self._model_route(ref)) is not None]
        gateways = route_status.Gateways(self._gateways.get, self._gateway_exists, self._ns_labels)
        found = route_problems(routes, self._services.get, gateways, self._extension_exists)
        for ref in refs:
            self._set_problems(self._l7_problems, ref, found.get(ref, ()))

    def _model_route(self, ref: ObjectRef) -> model_l7.HttpRoute | model_l7.GrpcRoute | None:
        entries = self._http_routes if ref[0] == "HTTPRoute" else self._grpc_routes
        return entries.get(_key(ref))

    def _extension_exists(self, kind: str, key: str) -> bool:  # an ExtensionRef's object
        return (kind, *key.split("/", 1)) in self._objects

    def _is_waypoint(self, key: str) -> bool:
        return self._gateways.get(key) is not None

    def _move_endpoint(
        self, ref: ObjectRef, before: m.Pod | None, whole: set[ObjectRef]
    ) -> set[ObjectRef]:
        """Update the pod's endpoint in the Services (not recomputed whole) that select it
        now or did before the batch; return those whose endpoints changed."""
        namespace, uid = ref[1], _key(ref)
        if self._services_of.get(namespace) <= whole:
            return set()
        pod = _typed(self._objects.get(ref), m.Pod)
        held = pod if pod is not None and self._pod_ips.holds(ref) else None
        changed = set()
        for svc_ref in (self._selecting(before) | self._selecting(pod)) - whole:
            endpoints = self._endpoints.get(svc_ref)
            if endpoints is None:  # not in the model
                continue
            svc = _typed(self._objects[svc_ref], m.Service)
            assert svc is not None
            endpoint = _endpoint(svc, held) if held is not None else None
            if endpoint is None:
                if endpoints.pop(uid, None) is not None:
                    changed.add(svc_ref)
            elif endpoints.get(uid) != endpoint:
                endpoints[uid] = endpoint
                changed.add(svc_ref)
        return changed

    def _selecting(self, pod: m.Pod | None) -> set[ObjectRef]:
        """The Services whose selector matches ``pod``'s labels."""
        if pod is None:
            return set()
        labels = dict(pod.labels)
        found: set[ObjectRef] = set()
        for k, v in pod.labels:
            for ref in self._services_by_label.get((pod.namespace, k, v)):
                if ref not in found:
                    svc = _typed(self._objects[ref], m.Service)
                    if svc is not None and selects(ref[1], svc.selector, pod.namespace, labels):
                        found.add(ref)
        return found

    def _endpoints_of(self, svc: m.Service) -> dict[str, model.Endpoint]:
        """Every endpoint of ``svc``, from the pods that have the rarest of its labels, or
        for a Service without a selector, from its EndpointSlices."""
        if not svc.selector:
            refs = self._topology.slices_of(("Service", svc.namespace, svc.name))
            slices = [s for r in refs if (s := _typed(self._objects.get(r), m.EndpointSlice))]
            return slice_endpoints(svc, slices)
        candidates = min(
            (self._pods_by_label.get((svc.namespace, k, v)) for k, v in svc.selector),
            key=len,
        )
        endpoints = {}
        for ref in candidates:
            pod = _typed(self._objects[ref], m.Pod)
            if pod is not None and self._pod_ips.holds(ref):
                endpoint = _endpoint(svc, pod)
                if endpoint is not None:
                    endpoints[endpoint.workload_uid] = endpoint
        return endpoints

    def _next(self) -> Translation:
        collections: dict[str, Entries[Any]] = {
            "workloads": self._workloads,
            "services": self._services,
            "authorizations": self._authorizations,
            "peer_authentications": self._peer_authentications,
            "request_authentications": self._request_authentications,
            "gateways": self._gateways,
            "http_routes": self._http_routes,
            "grpc_routes": self._grpc_routes,
            **self._traffic.collections(),
        }
        last = self._translation
        if last is None or any(c.changed for c in collections.values()):
            values = {name: c.values() for name, c in collections.items()}
            snapshot = model.MeshSnapshot(self._version, **values)
            self._version += 1
        else:
            snapshot = last.snapshot
        if last is None or self._problems_changed:
            merged: dict[ObjectRef, tuple[Problem, ...]] = dict(self._conflicts)
            for source in (self._waypoint_problems, self._l7_problems):
                for ref, found in source.items():
                    merged[ref] = merged.get(ref, ()) + found
            problems: Mapping[ObjectRef, tuple[Problem, ...]] = MappingProxyType(merged)
            self._problems_changed = False
        else:
            problems = last.problems
        if last is None or last.snapshot is not snapshot or last.problems is not problems:
            self._translation = last = Translation(snapshot, problems)
        return last
