"""The waypoint side of :class:`k8s.translate.Translator`: which waypoint each
Namespace, Service and Pod uses (``use-waypoint`` labels, :mod:`k8s.translate_l7`, read
by the translator when an object's labels change: ``_waypoint_named``), whether that
waypoint exists and runs, and the problems when it does not. A mixin over the
translator's own state (declared below), kept apart because it is its own rule; the
translator calls :meth:`WaypointBinding._bind_waypoints` once per batch. A waypoint of
another namespace binds an object only when its listeners admit the object's namespace
(a Namespace's labels changing rebinds its Services and Pods)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from k8s import manifests as m
from k8s.indexes import Entries, SetIndex
from k8s.problems import Problem
from k8s.store import ObjectRef
from k8s.translate_l7 import (
    OPT_OUT,
    WAYPOINT_TRAFFIC_MISMATCH,
    Traffic,
    resolve_waypoint,
    waypoint_ready,
)
from k8s.translate_parts import _key, _typed
from mesh import model, model_l7


@dataclass
class _Batch:
    """What one batch of changes touches."""

    pods: dict[ObjectRef, m.Pod | None] = field(default_factory=dict)  # as before the batch
    workloads: set[ObjectRef] = field(default_factory=set)  # only the workload (namespace)
    services: set[ObjectRef] = field(default_factory=set)  # recomputed whole
    waypoint_services: set[ObjectRef] = field(default_factory=set)  # only their waypoint
    namespaces: set[ObjectRef] = field(default_factory=set)  # whose labels changed
    gateways: set[str] = field(default_factory=set)  # keys of Gateways that changed
    routes: set[ObjectRef] = field(default_factory=set)  # whose references to check


class WaypointBinding:
    """Waypoint binding over the translator's state (the attributes below are the
    translator's, set in its ``__init__``)."""

    _objects: dict[ObjectRef, m.K8sObject]
    _pods_of: SetIndex[str, ObjectRef]
    _services_of: SetIndex[str, ObjectRef]
    _endpoints: dict[ObjectRef, dict[str, model.Endpoint]]
    _waypoint_users: SetIndex[str, ObjectRef]
    _waypoint_named: dict[ObjectRef, str]
    _waypoint_ready: dict[str, bool]
    _waypoint_problems: dict[ObjectRef, tuple[Problem, ...]]
    _problems_changed: bool
    _workloads: Entries[model.Workload]
    _services: Entries[model.Service]
    _gateways: Entries[model_l7.Gateway]

    def _set_problems(
        self,
        source: dict[ObjectRef, tuple[Problem, ...]],
        ref: ObjectRef,
        problems: tuple[Problem, ...],
    ) -> None:
        if source.get(ref, ()) == problems:
            return
        if problems:
            source[ref] = problems
        else:
            del source[ref]
        self._problems_changed = True

    def _bind_waypoints(self, batch: _Batch, touched: set[ObjectRef]) -> None:
        """Decide the waypoint of every workload and Service the batch may have changed
        the waypoint of: those it rebuilt or relabelled, and the users of the waypoints
        whose Gateway changed, that started or stopped running, or whose Service changed."""
        pods = batch.workloads.union(batch.pods)
        services = touched | batch.waypoint_services
        namespaces = set(batch.namespaces)
        if not (pods or services or namespaces or batch.gateways):
            return
        referenced = self._waypoint_users.keys()
        keys = batch.gateways & referenced
        keys.update(key for ref in touched if (key := _key(ref)) in referenced)
        for key in referenced:
            ready = waypoint_ready(self._services.get(key), self._workloads.get)
            if self._waypoint_ready.get(key) != ready:
                self._waypoint_ready[key] = ready
                keys.add(key)
        for key in self._waypoint_ready.keys() - referenced:
            del self._waypoint_ready[key]
        for key in keys:
            for ref in self._waypoint_users.get(key):
                if ref[0] == "Pod":
                    pods.add(ref)
                elif ref[0] == "Service":
                    services.add(ref)
                else:
                    namespaces.add(ref)
                    pods.update(self._pods_of.get(ref[2]))
                    services.update(self._services_of.get(ref[2]))
        for ref in pods:
            workload = self._workloads.get(_key(ref))
            bound = self._bind(ref, "workload" if workload else None)
            if workload is not None and workload.waypoint != bound:
                self._workloads.set(_key(ref), dataclasses.replace(workload, waypoint=bound))
        for ref in services:
            service = self._services.get(_key(ref))
            bound = self._bind(ref, "service" if service else None)
            if service is not None and service.waypoint != bound:
                self._services.set(_key(ref), dataclasses.replace(service, waypoint=bound))
        for ref in namespaces:
            self._bind(ref, "namespace")

    def _bind(
        self, ref: ObjectRef, target: Literal["service", "workload", "namespace"] | None
    ) -> str | None:
        """The waypoint of a Service or a Pod's workload in the model (``target`` "service"
        or "workload"; None when not in the model: no waypoint), or of a Namespace (only
        whether the waypoint its label names exists and runs); records the problem."""
        wanted = self._waypoint_named.get(ref) if target is not None else None
        explicit = wanted is not None
        if wanted is None and target in ("service", "workload"):
            wanted = self._waypoint_named.get(("Namespace", "", ref[1]))
        if wanted is None or wanted == OPT_OUT:
            self._set_problems(self._waypoint_problems, ref, ())
            return None
        gateway_ns, _, gateway_name = wanted.partition("/")
        gateway = _typed(self._objects.get(("Gateway", gateway_ns, gateway_name)), m.Gateway)
        ready = self._waypoint_ready.get(wanted, False)
        entry = self._gateways.get(wanted)
        traffic: Traffic | None = None if target == "namespace" else target
        namespace = ref[2] if ref[0] == "Namespace" else ref[1]
        user = self._objects.get(("Namespace", "", namespace))
        admitted = entry is None or entry.admits(namespace, user.labels if user else ())
        bound, problem = resolve_waypoint(wanted, traffic, entry, gateway, ready, admitted)
        if bound is not None and self._serves(bound, ref):
            bound = None  # a waypoint's own Service and pods never go through it
        # Reported on what names the waypoint itself, and on a Service also what its
        # namespace names, unless that waypoint takes no traffic to Services.
        mismatch = problem is not None and problem.reason == WAYPOINT_TRAFFIC_MISMATCH
        report = explicit or (target == "service" and not mismatch)
        found = (problem,) if problem is not None and report else ()
        self._set_problems(self._waypoint_problems, ref, found)
        return bound

    def _gateway_exists(self, key: str) -> bool:
        namespace, _, name = key.partition("/")
        return ("Gateway", namespace, name) in self._objects

    def _ns_labels(self, namespace: str) -> m.Pairs:
        found = self._objects.get(("Namespace", "", namespace))
        return found.labels if found is not None else ()

    def _serves(self, key: str, ref: ObjectRef) -> bool:
        """Whether ``ref`` is the waypoint ``key``'s Service or one of its pods."""
        if ref[0] == "Service":
            return _key(ref) == key
        namespace, _, name = key.partition("/")
        return _key(ref) in self._endpoints.get(("Service", namespace, name), {})
