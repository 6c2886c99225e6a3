"""What local mode needs from manifests: an adapter over :mod:`k8s.manifests`.

:func:`load_objects` reads YAML files and returns one :class:`Manifest` per
object: its key, the small local view the cluster acts on (:class:`PodSpec`,
:class:`ServiceSpec`, :class:`NamespaceSpec`) and the typed object itself,
which is what the control plane hook receives. Problems raise
:class:`ManifestProblem` naming the file and the field; local mode adds a few
checks of its own (a Pod needs a ``command``; no ``hostNetwork``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from k8s import manifests
from k8s.local.errors import LocalClusterError
from k8s.translate import meshed_by_labels

log = structlog.get_logger("ambit.local.objects")


class ManifestProblem(LocalClusterError):
    """A manifest file cannot be used; the message names the file and the field."""


@dataclass(frozen=True, order=True)
class ObjectKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class NamespaceSpec:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    node_name: str | None = None
    service_account: str = "default"
    ports: tuple[int, ...] = ()
    named_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def argv(self) -> tuple[str, ...]:
        return self.command + self.args


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceSpec:
    namespace: str
    name: str
    selector: Mapping[str, str]
    ports: tuple[ServicePort, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster_ip: str | None = None


LocalView = PodSpec | ServiceSpec | NamespaceSpec


@dataclass(frozen=True)
class Manifest:
    key: ObjectKey
    local: LocalView | None
    source: manifests.K8sObject
    path: str = ""


def load_objects(paths: Sequence[str | Path]) -> list[Manifest]:
    """Every object of ``paths`` (YAML, several documents per file), read by
    :func:`k8s.manifests.load`; adds the checks only local mode needs."""
    result: list[Manifest] = []
    for path in paths:
        try:
            objects = manifests.load(path)
        except manifests.ManifestError as exc:
            raise ManifestProblem(str(exc)) from None
        result += [_manifest(obj, str(path)) for obj in objects]
    return result


def is_meshed(pod: PodSpec, namespace: NamespaceSpec | None) -> bool:
    """Opt-in by label, by the mesh model's rule (:func:`k8s.translate.meshed_by_labels`)."""
    return meshed_by_labels(pod.labels, namespace.labels if namespace is not None else None)


def _manifest(obj: manifests.K8sObject, path: str) -> Manifest:
    key = ObjectKey(type(obj).__name__, obj.namespace, obj.name)
    labels = dict(obj.labels)
    local: LocalView | None = None
    if isinstance(obj, manifests.Namespace):
        local = NamespaceSpec(obj.name, labels)
    elif isinstance(obj, manifests.Pod):
        local = _pod(obj, path, labels)
    elif isinstance(obj, manifests.Service):
        local = _service(obj, path, labels)
    return Manifest(key, local, obj, path)


def _problem(path: str, obj: manifests.K8sObject, field_path: str, message: str) -> ManifestProblem:
    kind = type(obj).__name__
    return ManifestProblem(f"{path} ({kind} {obj.namespace}/{obj.name}): {field_path}: {message}")


def _pod(pod: manifests.Pod, path: str, labels: dict[str, str]) -> PodSpec:
    if pod.host_network:
        raise _problem(path, pod, "spec.hostNetwork", "not supported in local mode; remove it")
    container = pod.containers[0]
    if not container.command:
        raise _problem(
            path, pod, "spec.containers[0].command",
            "required in local mode: images are ignored and the command runs on this machine"
            " (e.g. command: [python3, -m, http.server, '8080'])",
        )  # fmt: skip
    if len(pod.containers) > 1:
        log.warning("pod_extra_containers_ignored", pod=f"{pod.namespace}/{pod.name}", path=path)
    return PodSpec(
        namespace=pod.namespace,
        name=pod.name,
        command=container.command,
        args=container.args,
        env=container.env,
        labels=labels,
        node_name=pod.node_name or None,
        service_account=pod.service_account,
        ports=tuple(p.port for p in container.ports if p.protocol == "TCP"),
        named_ports=dict(pod.named_ports),
    )


def _service(service: manifests.Service, path: str, labels: dict[str, str]) -> ServiceSpec:
    for index, port in enumerate(service.ports):
        if port.protocol not in ("TCP", "UDP"):
            raise _problem(
                path, service, f"spec.ports[{index}].protocol",
                f"{port.protocol} is not supported in local mode; use TCP or UDP",
            )  # fmt: skip
    return ServiceSpec(
        namespace=service.namespace,
        name=service.name,
        selector=dict(service.selector or ()),
        ports=tuple(ServicePort(p.port, p.target_port, p.name, p.protocol) for p in service.ports),
        labels=labels,
        cluster_ip=service.cluster_ip,
    )
