"""What one object becomes in the mesh model, pure: a Pod's workload (meshed by the
``ambit.io/dataplane-mode`` label, or Istio's, of the Pod or its Namespace), a Service's
ports and each pod's endpoint (the one endpoint rule of :mod:`k8s.endpoints`), the problem a
lost address contest gives; and the small helpers the :class:`k8s.translate.Translator`
runs them with."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final, TypeVar

from k8s import manifests as m
from k8s.claims import Contest
from k8s.endpoints import selects, target_port
from k8s.problems import Problem
from k8s.store import ObjectRef, describe
from mesh import model
from mesh.constants import ISTIO_LABEL_DATAPLANE_MODE, LABEL_DATAPLANE_MODE, LABEL_GATEWAY_NAME

IP_CONFLICT: Final = "IPConflict"
IP_CONFLICT_KEPT: Final = "IPConflictKept"
CLUSTER_IP_CONFLICT: Final = "ClusterIPConflict"
CLUSTER_IP_CONFLICT_KEPT: Final = "ClusterIPConflictKept"
CONFLICT_REASONS: Final = (IP_CONFLICT, IP_CONFLICT_KEPT, CLUSTER_IP_CONFLICT,
                           CLUSTER_IP_CONFLICT_KEPT)  # fmt: skip


def meshed_by_labels(
    pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None
) -> bool:
    """Pod label ``none`` opts out, ``ambient`` opts in; otherwise the namespace's label
    decides (``ambit.io/dataplane-mode``, or Istio's ``istio.io/`` spelling where ambit's
    is not set). The one rule: translation and the local cluster both ask it."""
    pod_mode = dataplane_mode(pod_labels)
    if pod_mode in ("none", "ambient"):
        return pod_mode == "ambient"
    return namespace_labels is not None and dataplane_mode(namespace_labels) == "ambient"


def dataplane_mode(labels: Mapping[str, str]) -> str | None:
    """The dataplane-mode label's value: ambit's, else Istio's, else None."""
    if LABEL_DATAPLANE_MODE in labels:
        return labels[LABEL_DATAPLANE_MODE]
    return labels.get(ISTIO_LABEL_DATAPLANE_MODE)


def in_mesh(pod: m.Pod, namespace: m.Namespace | None) -> bool:
    return meshed_by_labels(
        dict(pod.labels), dict(namespace.labels) if namespace is not None else None
    )


def native_tunnel(pod: m.Pod, is_waypoint: Callable[[str], bool]) -> bool:
    """Whether ``pod`` is a waypoint's: labelled ``gateway.networking.k8s.io/gateway-name``
    with the name of a Gateway of its namespace that ``is_waypoint`` (given its key,
    ``namespace/name``). Such a pod speaks HBONE itself: it is in the mesh whatever the
    dataplane-mode labels say, and no ztunnel captures it. The one rule: translation and
    the local cluster both ask it."""
    for key, value in pod.labels:
        if key == LABEL_GATEWAY_NAME:
            return is_waypoint(f"{pod.namespace}/{value}")
    return False


def workload_uid(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _pod_address(pod: m.Pod | None) -> str | None:
    """The IP a pod's workload has: none before the pod has one, for host-network pods
    (the node's address) and for finished pods."""
    if pod is None or pod.host_network or pod.phase in ("Succeeded", "Failed"):
        return None
    return pod.pod_ip


def _service_address(svc: m.Service | None) -> str | None:
    """A Service is in the mesh with a cluster IP (not headless); its endpoints come from
    the pods its selector matches or, without a selector, from its EndpointSlices."""
    return svc.cluster_ip if svc is not None else None


def _workload(
    pod: m.Pod,
    namespace: m.Namespace | None,
    trust_domain: str,
    waypoint: str | None = None,
    *,
    tunnel: bool = False,
    locality: model.Locality | None = None,
) -> model.Workload:
    """``tunnel``: the pod is a waypoint's (:func:`native_tunnel`); ``locality``: its
    node's."""
    assert pod.pod_ip is not None
    return model.Workload.build(
        uid=workload_uid(pod.namespace, pod.name),
        name=pod.name,
        namespace=pod.namespace,
        service_account=pod.service_account,
        node=pod.node_name,
        ip=pod.pod_ip,
        labels=pod.labels,
        protocol="HBONE" if tunnel or in_mesh(pod, namespace) else "TCP",
        trust_domain=trust_domain,
        container_ports=pod.named_ports,
        waypoint=waypoint,
        native_tunnel=tunnel,
        locality=locality,
    )


def _ports(svc: m.Service) -> tuple[model.ServicePort, ...]:
    return tuple(
        model.ServicePort(
            port=p.port,
            target_port=p.target_port if isinstance(p.target_port, int) else 0,
            name=p.name,
            protocol=p.protocol,
            target_port_name=p.target_port if isinstance(p.target_port, str) else "",
            app_protocol=p.app_protocol,
        )
        for p in svc.ports
    )


def _endpoint(svc: m.Service, pod: m.Pod) -> model.Endpoint | None:
    """``pod`` behind ``svc`` if the Service selects it, it is Ready, and it serves one of
    the Service's ports (the one rule for endpoints, whatever the source)."""
    if not pod.ready or not selects(svc.namespace, svc.selector, pod.namespace, pod.label_set):
        return None
    named = dict(pod.named_ports) if svc.named_targets else {}
    mapping = []
    for p in svc.ports:
        target = target_port(p.target_port, named)
        if target is not None:
            mapping.append((p.port, target))
    if not mapping:
        return None
    assert pod.pod_ip is not None
    return model.Endpoint.build(workload_uid(pod.namespace, pod.name), pod.pod_ip, tuple(mapping))


_REASONS: Final = {"pod IP": (IP_CONFLICT, IP_CONFLICT_KEPT),
                   "cluster IP": (CLUSTER_IP_CONFLICT, CLUSTER_IP_CONFLICT_KEPT)}  # fmt: skip


def _conflict(ref: ObjectRef, contest: Contest[ObjectRef], what: str) -> Problem:
    """The Problem of one object in a conflict over an address (``what``: pod or cluster IP)."""
    lost, kept = _REASONS[what]
    advice = "delete whichever is stale, or find why the address was given twice"
    if ref == contest.holder:
        others = ", ".join(describe(r) for r in contest.others)
        return Problem(
            kept,
            f"keeps {what} {contest.address}, also claimed by {others} (left out of the mesh"
            f" while this {ref[0]} has it); {advice}",
        )
    why = (
        "was created first"
        if ref in contest.later
        else "comes first (creation times equal or unknown, then by namespace and name)"
    )
    return Problem(
        lost,
        f"{describe(contest.holder)} has the same {what} {contest.address} and {why}, so this"
        f" {ref[0]} is left out of the mesh; {advice}",
    )


def _key(ref: ObjectRef) -> str:
    """The model's key of what an object becomes (a workload's uid, a Service's key...)."""
    return f"{ref[1]}/{ref[2]}"


# A batch that made more objects the cyclic collector tracks than this (a translation of
# a few hundred pods or more) hands them to its oldest generation.
_MANY_OBJECTS: Final = 10_000


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """A translation makes tens of thousands of objects and no reference cycles (frozen
    values built from values), and the cyclic collector would run every few hundred of
    them: a quarter of a full translation's time. Paused for one batch; reference
    counting still frees everything as usual.

    What a big batch made stays: the translator's state and the snapshot. Left young,
    all of it would be traversed at once by the first collection after the batch (7% of
    a full translation), then again in the middle generation; instead it goes straight
    to the oldest generation (``gc.freeze`` then ``gc.unfreeze``: two list splices),
    whose full collections look at it as at any long-lived object. What else was young
    then (at most the young generations' thresholds: about 7,700 objects) waits for the
    next full collection too. Never when something else froze objects (``unfreeze``
    would thaw them), never for a small batch (a one-pod change)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_count()[0] > _MANY_OBJECTS and gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


T = TypeVar("T")


def _typed(obj: object, cls: type[T]) -> T | None:
    if obj is None:
        return None
    assert isinstance(obj, cls), obj
    return obj
