"""What EndpointSlices and Nodes mean for the mesh, pure.

A Service **without a selector** takes its endpoints from the EndpointSlices labelled
``kubernetes.io/service-name`` with its name (as Istio's and kube-proxy's do); a
Service with a selector keeps the endpoints :mod:`k8s.endpoints` finds among the pods
(they carry the identities and labels the mesh needs; the controller manager's own
slices of it are ignored, so nothing is counted twice). Of a slice:

- only the slices of the Service's cluster IP's family (``IPv4`` or ``IPv6``; ``FQDN``
  never);
- an endpoint serves when its ``ready`` condition is true or unset (kube-proxy's rule:
  a terminating endpoint is not ready and takes no new connection); its first address
  is the one dialled;
- a Service port is served on the slice port of its name and protocol; a slice port
  without a number (every port) serves it on the Service's numeric ``targetPort``;
- an endpoint whose ``targetRef`` is a Pod is that pod's workload (:func:`workload_uid`:
  a meshed pod gets HBONE and its identity is checked); any other address is a backend
  outside the mesh (:func:`address_uid`, no workload: plain TCP);
- one backend in several slices (slices split by port sets) is one endpoint with the
  ports of all.

A workload's locality is its node's ``topology.kubernetes.io`` region and zone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Set

from k8s import manifests as m
from k8s.indexes import SetIndex
from k8s.store import ObjectRef
from k8s.translate_parts import workload_uid
from mesh import model


def address_uid(namespace: str, service: str, address: str) -> str:
    """The ``workload_uid`` of an endpoint that is no pod: a key no workload has (a pod's
    is ``namespace/name``)."""
    return f"{namespace}/{service}/{address}"


def _family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def slice_ports(svc: m.Service, ports: tuple[m.SlicePort, ...]) -> tuple[tuple[int, int], ...]:
    """``(service port, target port)`` for each Service port a slice serves."""
    out = []
    for p in svc.ports:
        for sp in ports:
            if sp.name == p.name and sp.protocol == p.protocol:
                target = sp.port if sp.port is not None else p.target_port
                if isinstance(target, int):
                    out.append((p.port, target))
                break
    return tuple(out)


def slice_endpoints(svc: m.Service, slices: Iterable[m.EndpointSlice]) -> dict[str, model.Endpoint]:
    """The endpoints of the selectorless ``svc`` from its ``slices``, by workload uid."""
    if svc.cluster_ip is None:
        return {}
    family = _family(svc.cluster_ip)
    found: dict[str, tuple[str, dict[int, int]]] = {}
    for s in sorted(slices, key=lambda s: s.name):
        if s.address_type != family or s.namespace != svc.namespace:
            continue
        mapping = slice_ports(svc, s.ports)
        if not mapping:
            continue
        for e in s.endpoints:
            if not e.ready:
                continue
            if e.pod is not None:
                uid = workload_uid(*e.pod)
            else:
                uid = address_uid(svc.namespace, svc.name, e.address)
            ip, ports = found.setdefault(uid, (e.address, {}))
            if ip == e.address:  # a pod listed with two addresses: the first slice's
                for port, target in mapping:
                    ports.setdefault(port, target)
    return {
        uid: model.Endpoint.build(uid, ip, tuple(ports.items()))
        for uid, (ip, ports) in found.items()
    }


def locality(node: m.Node | None) -> model.Locality | None:
    """A workload's locality from its node's labels; None when they say nothing."""
    if node is None or not (node.region or node.zone):
        return None
    return model.Locality(region=node.region, zone=node.zone)


class Topology:
    """The translator's index of EndpointSlices and Nodes: slices by the Service they
    name, pods by node, each node's locality."""

    def __init__(self) -> None:
        self._slices_of: SetIndex[ObjectRef, ObjectRef] = SetIndex()
        self._pods_on: SetIndex[str, ObjectRef] = SetIndex()
        self.localities: dict[str, model.Locality | None] = {}  # by node name

    def put_slice(
        self, ref: ObjectRef, old: m.EndpointSlice | None, new: m.EndpointSlice | None
    ) -> set[ObjectRef]:
        """File the slice under its Service; the Services it named before or names now."""
        before = ("Service", ref[1], old.service_name) if old and old.service_name else None
        after = ("Service", ref[1], new.service_name) if new and new.service_name else None
        if before != after:
            if before is not None:
                self._slices_of.discard(before, ref)
            if after is not None:
                self._slices_of.add(after, ref)
        return {r for r in (before, after) if r is not None}

    def slices_of(self, service: ObjectRef) -> Set[ObjectRef]:
        return self._slices_of.get(service)

    def move_pod(self, ref: ObjectRef, before: str | None, after: str | None) -> None:
        """The pod ``ref`` moved from node ``before`` to ``after`` (None: no pod)."""
        if before is not None:
            self._pods_on.discard(before, ref)
        if after is not None:
            self._pods_on.add(after, ref)

    def put_node(self, name: str, node: m.Node | None) -> Set[ObjectRef]:
        """The pods on the node whose locality changed (none when it did not)."""
        where = locality(node)
        if self.localities.get(name) == where:
            return frozenset()
        self.localities[name] = where
        return self._pods_on.get(name)


def selectorless(obj: object) -> bool:
    """A Service whose endpoints are its EndpointSlices' (the controller manager's slices
    of a Service with a selector change with every pod: they are left alone)."""
    return isinstance(obj, m.Service) and not obj.selector
