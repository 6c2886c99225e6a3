"""The core kinds, read from manifests: Namespace, ServiceAccount, Pod (its containers,
status and readiness) and Service (its ports), keeping only the fields later parts use
and ignoring the rest, as real manifests carry much more. Re-exported by
:mod:`k8s.manifests`, which declares every kind."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from k8s.manifest_reader import Meta, Pairs, Reader, read_meta


@dataclass(frozen=True, kw_only=True)
class Namespace(Meta):
    namespace: str = ""


@dataclass(frozen=True, kw_only=True)
class ServiceAccount(Meta):
    pass


@dataclass(frozen=True, kw_only=True)
class ContainerPort:
    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, kw_only=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Pairs = ()  # literal values only; ``valueFrom`` entries are left out
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Pod(Meta):
    node_name: str = ""
    service_account: str = "default"
    containers: tuple[Container, ...] = ()
    host_network: bool = False
    pod_ip: str | None = None
    phase: str = ""
    # status.conditions' Ready; without conditions, a pod counts as ready unless its
    # phase says otherwise (a manifest file with only a podIP describes a running pod).
    ready: bool = True

    @functools.cached_property
    def named_ports(self) -> tuple[tuple[str, int], ...]:
        """``(name, port)`` of every named container port, for named targetPorts."""
        return tuple((p.name, p.port) for c in self.containers for p in c.ports if p.name)

    @functools.cached_property
    def label_set(self) -> frozenset[tuple[str, str]]:
        """The labels as a set of pairs: what a Service's selector is checked against."""
        return frozenset(self.labels)

    @property
    def argv(self) -> tuple[str, ...]:
        """What local mode runs: the first container's command and args."""
        first = self.containers[0] if self.containers else None
        return first.command + first.args if first else ()

    @property
    def env(self) -> Pairs:
        return self.containers[0].env if self.containers else ()

    @property
    def tcp_ports(self) -> tuple[int, ...]:
        """The first container's TCP ports (what local mode waits to see listening)."""
        first = self.containers[0] if self.containers else None
        return tuple(p.port for p in first.ports if p.protocol == "TCP") if first else ()

    def same_spec(self, other: Pod) -> bool:
        """Whether ``other`` runs the same thing (labels, annotations and server metadata
        change in place, as on Kubernetes; anything else recreates the pod)."""
        return (self.containers, self.node_name, self.service_account, self.host_network) == (
            other.containers,
            other.node_name,
            other.service_account,
            other.host_network,
        )

    def with_ip(self, ip: str) -> Pod:
        return dataclasses.replace(self, pod_ip=ip)


@dataclass(frozen=True, kw_only=True)
class ServicePortSpec:
    port: int
    target_port: int | str  # a number, or the name of a container port
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""  # spec.ports[].appProtocol as given ("http", "kubernetes.io/h2c"...)


@dataclass(frozen=True, kw_only=True)
class Service(Meta):
    selector: Pairs | None = None
    ports: tuple[ServicePortSpec, ...] = ()
    cluster_ip: str | None = None  # None: not allocated yet, or headless

    @functools.cached_property
    def named_targets(self) -> bool:
        """Whether a port's targetPort is a container port's name (resolved per pod)."""
        return any(isinstance(p.target_port, str) for p in self.ports)

    def with_cluster_ip(self, ip: str) -> Service:
        return dataclasses.replace(self, cluster_ip=ip)


def read_pod(r: Reader, doc: Mapping[str, object]) -> Pod:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec")
    items = r.sequence(spec.get("containers"), "spec.containers")
    if not items:
        r.fail("spec.containers", "a Pod needs at least one container")
    containers: list[Container] = []
    for i, item in enumerate(items):
        path = f"spec.containers[{i}]"
        c = r.mapping(item, path)
        env = []
        for j, e in enumerate(r.sequence(c.get("env"), f"{path}.env")):
            var = r.mapping(e, f"{path}.env[{j}]")
            if "valueFrom" not in var:
                name = r.env_name(var.get("name"), f"{path}.env[{j}].name")
                env.append((name, r.string(var.get("value"), f"{path}.env[{j}].value", "")))
        ports = []
        for j, p in enumerate(r.sequence(c.get("ports"), f"{path}.ports")):
            port = r.mapping(p, f"{path}.ports[{j}]")
            ports.append(
                ContainerPort(
                    port=r.port(port.get("containerPort"), f"{path}.ports[{j}].containerPort"),
                    name=r.port_name(port.get("name"), f"{path}.ports[{j}].name"),
                    protocol=r.string(port.get("protocol"), f"{path}.ports[{j}].protocol", "TCP"),
                )
            )
        if any(other.name == c.get("name") for other in containers):
            r.fail(f"{path}.name", f"{c.get('name')!r} is also the name of another container")
        containers.append(
            Container(
                name=r.label_name(c.get("name"), f"{path}.name"),
                image=r.string(c.get("image"), f"{path}.image", ""),
                command=r.strings(c.get("command"), f"{path}.command"),
                args=r.strings(c.get("args"), f"{path}.args"),
                env=tuple(env),
                ports=tuple(ports),
            )
        )
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        r.fail("spec.hostNetwork", f"must be true or false, not {host_network!r}")
    status = r.mapping(doc.get("status"), "status")
    phase = r.string(status.get("phase"), "status.phase", "")
    sa = spec.get("serviceAccountName", spec.get("serviceAccount"))
    return Pod(
        **meta,
        node_name=r.name(spec.get("nodeName"), "spec.nodeName") if spec.get("nodeName") else "",
        service_account=r.name(sa, "spec.serviceAccountName", "default"),
        containers=tuple(containers),
        host_network=host_network,
        pod_ip=r.ip(status["podIP"], "status.podIP") if status.get("podIP") else None,
        phase=phase,
        ready=_pod_ready(r, status, phase),
    )


def _pod_ready(r: Reader, status: Mapping[str, object], phase: str) -> bool:
    """Whether the kubelet says the pod is Ready (the rule for a Service's endpoints)."""
    for i, item in enumerate(r.sequence(status.get("conditions"), "status.conditions")):
        condition = r.mapping(item, f"status.conditions[{i}]")
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return phase in ("", "Running")


def read_service(r: Reader, doc: Mapping[str, object]) -> Service:
    meta = read_meta(r, doc, name_check=Reader.dns1035_name)
    spec = r.mapping(doc.get("spec"), "spec")
    ports: list[ServicePortSpec] = []
    items = r.sequence(spec.get("ports"), "spec.ports")
    for i, item in enumerate(items):
        p = r.mapping(item, f"spec.ports[{i}]")
        port = r.port(p.get("port"), f"spec.ports[{i}].port")
        target = p.get("targetPort", port)
        if isinstance(target, str) and target and not target.isdigit():
            target = r.port_name(target, f"spec.ports[{i}].targetPort")
        else:
            target = r.port(target, f"spec.ports[{i}].targetPort", text_ok=True)
        protocol = r.string(p.get("protocol"), f"spec.ports[{i}].protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            r.fail(f"spec.ports[{i}].protocol", f"must be TCP, UDP or SCTP, not {protocol!r}")
        name = r.label_name(p.get("name"), f"spec.ports[{i}].name") if p.get("name") else ""
        if len(items) > 1 and not name:
            r.fail(f"spec.ports[{i}].name", "required when a Service has more than one port")
        for j, other in enumerate(ports):
            if name and other.name == name:
                r.fail(f"spec.ports[{i}].name", f"{name!r} is also the name of spec.ports[{j}]")
            if (other.port, other.protocol) == (port, protocol):
                r.fail(f"spec.ports[{i}]", f"port {port}/{protocol} is also spec.ports[{j}]")
        app_protocol = r.string(p.get("appProtocol"), f"spec.ports[{i}].appProtocol", "")
        ports.append(
            ServicePortSpec(
                port=port,
                target_port=target,
                name=name,
                protocol=protocol,
                app_protocol=app_protocol,
            )
        )
    cluster_ip = spec.get("clusterIP")
    headless = cluster_ip in (None, "", "None")
    return Service(
        **meta,
        selector=r.labels(spec.get("selector"), "spec.selector") or None,
        ports=tuple(ports),
        cluster_ip=None if headless else r.ip(cluster_ip, "spec.clusterIP"),
    )


def read_namespace(r: Reader, doc: Mapping[str, object]) -> Namespace:
    return Namespace(**read_meta(r, doc, namespaced=False, name_check=Reader.label_name))


def read_service_account(r: Reader, doc: Mapping[str, object]) -> ServiceAccount:
    return ServiceAccount(**read_meta(r, doc))
