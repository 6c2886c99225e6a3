"""Which label on which object binds a Service or pod to its waypoint, in words: what
``ambit why`` says at the outbound plan (:mod:`explain.why` takes it as ``binding``), from
the cluster's or the control plane's objects (the model keeps only the waypoint's key)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from k8s.translate_l7 import use_waypoint
from mesh.constants import ISTIO_LABEL_USE_WAYPOINT, LABEL_USE_WAYPOINT

if TYPE_CHECKING:
    from mesh.model import Service, Workload

Labels: TypeAlias = Callable[[str, str, str], Mapping[str, str]]
"""The labels of an object by kind, namespace ("" for a Namespace) and name."""


def labels_of(objects: Iterable[Any]) -> Labels:
    """The labels of the Namespaces and Services among typed objects
    (:mod:`k8s.manifests`)."""
    from k8s import manifests as m

    found: dict[tuple[str, str, str], dict[str, str]] = {}
    for o in objects:
        if isinstance(o, m.Namespace):
            found[("Namespace", "", o.name)] = dict(o.labels)
        elif isinstance(o, m.Service):
            found[("Service", o.namespace, o.name)] = dict(o.labels)
    return lambda *key: found.get(key, {})


def waypoint_binding(labels: Labels) -> Callable[[Service | Workload], str | None]:
    """Which label on which object binds a Service or pod to its waypoint, in words."""
    from mesh.model import Service

    def said(kind: str, namespace: str, name: str, labels: Mapping[str, str]) -> str | None:
        if use_waypoint(tuple(labels.items()), namespace) is None:
            return None
        label = LABEL_USE_WAYPOINT if LABEL_USE_WAYPOINT in labels else ISTIO_LABEL_USE_WAYPOINT
        where = f"{namespace}/{name}" if kind != "Namespace" else name
        return f"label {label}={labels.get(label, '')} on {kind} {where}"

    def binding(bound: Service | Workload) -> str | None:
        if isinstance(bound, Service):
            own = said("Service", bound.namespace, bound.name,
                       labels("Service", bound.namespace, bound.name))  # fmt: skip
        else:
            own = said("Pod", bound.namespace, bound.name, dict(bound.labels))
        if own is not None:
            return own
        ns = labels("Namespace", "", bound.namespace)
        return said("Namespace", bound.namespace, bound.namespace, ns)

    return binding
