"""The one rule for a Service's endpoints, used by every source (translation to the mesh
model, local mode's service rules): the pods of the Service's namespace whose labels
match its selector, each serving a Service port on the target port it names, by
number or by the name of one of the pod's container ports. A Service without a
selector selects nothing here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def selects(
    service_namespace: str,
    selector: Iterable[tuple[str, str]] | Mapping[str, str] | None,
    pod_namespace: str,
    pod_labels: Mapping[str, str],
) -> bool:
    """Whether a Service (its namespace and selector) selects a pod."""
    wanted = dict(selector or {})
    if not wanted or service_namespace != pod_namespace:
        return False
    return all(pod_labels.get(key) == value for key, value in wanted.items())


def target_port(target: int | str, named_ports: Mapping[str, int]) -> int | None:
    """The pod's port for a Service port's ``targetPort``; None when the pod has no
    container port of that name."""
    return named_ports.get(target) if isinstance(target, str) else target
