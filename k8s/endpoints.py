"""The one rule for a Service's endpoints, used by every source (translation to the mesh
model, local mode's service rules): the pods of the Service's namespace whose labels
match its selector, each serving a Service port on the target port it names, by
number or by the name of one of the pod's container ports. A Service without a
selector selects nothing here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set


def selects(
    service_namespace: str,
    selector: Iterable[tuple[str, str]] | Mapping[str, str] | None,
    pod_namespace: str,
    pod_labels: Mapping[str, str] | Set[tuple[str, str]],
) -> bool:
    """Whether a Service (its namespace and selector) selects a pod. ``pod_labels`` is a
    mapping, or the set of its ``(key, value)`` pairs (what translation keeps per pod)."""
    if not selector or service_namespace != pod_namespace:
        return False
    pairs = selector.items() if isinstance(selector, Mapping) else selector
    if isinstance(pod_labels, Set):
        return all(pair in pod_labels for pair in pairs)
    return all(pod_labels.get(key) == value for key, value in pairs)


def target_port(target: int | str, named_ports: Mapping[str, int]) -> int | None:
    """The pod's port for a Service port's ``targetPort``; None when the pod has no
    container port of that name."""
    return named_ports.get(target) if isinstance(target, str) else target
