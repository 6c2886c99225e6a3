"""Small builders for model objects, so a test states only what it is about."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mesh.authz import Connection
from mesh.identity import SpiffeId
from mesh.model import (
    GATEWAY_GROUP,
    Authorization,
    Condition,
    Endpoint,
    MeshSnapshot,
    Operation,
    PeerAuthentication,
    Resource,
    Rule,
    Service,
    ServicePort,
    Source,
    TargetRef,
    Workload,
)


def identity(namespace: str = "default", sa: str = "client") -> SpiffeId:
    return SpiffeId("cluster.local", namespace, sa)


def workload(
    name: str = "web",
    namespace: str = "default",
    *,
    ip: str = "10.0.0.10",
    sa: str | None = None,
    node: str = "node-1",
    labels: Mapping[str, str] | None = None,
    meshed: bool = True,
    named_ports: Mapping[str, int] | None = None,
    trust_domain: str = "cluster.local",
    waypoint: str | None = None,
) -> Workload:
    """A pod; its service account defaults to its name, its labels to ``app: <name>``."""
    return Workload(
        uid=f"{namespace}/{name}",
        name=name,
        namespace=namespace,
        service_account=sa or name,
        node=node,
        ip=ip,
        labels=tuple((labels if labels is not None else {"app": name}).items()),
        protocol="HBONE" if meshed else "TCP",
        trust_domain=trust_domain,
        container_ports=tuple((named_ports or {}).items()),
        waypoint=waypoint,
    )


def service(
    name: str = "web",
    namespace: str = "default",
    *,
    vip: str = "10.96.0.10",
    ports: Mapping[int, int] | Iterable[ServicePort] | None = None,
    backends: Iterable[Workload] = (),
) -> Service:
    """A Service whose endpoints are ``backends``, each serving every port at its target.
    ``ports`` default to ``{80: 8080}``."""
    if ports is None:
        ports = {80: 8080}
    if isinstance(ports, Mapping):
        specs = tuple(ServicePort(port, target) for port, target in ports.items())
    else:
        specs = tuple(ports)
    endpoints = tuple(
        Endpoint(w.uid, w.ip, tuple((p.port, p.target_port) for p in specs)) for w in backends
    )
    return Service(name, namespace, vip, specs, endpoints)


def source(**fields: Iterable[str]) -> Source:
    return Source(**{k: tuple(v) for k, v in fields.items()})


def op(*ports: int, not_ports: Iterable[int] = (), **l7: Iterable[str]) -> Operation:
    """An operation on ``ports``; keywords set its L7 fields (``methods=["GET"]``...)."""
    return Operation(ports, tuple(not_ports), **{k: tuple(v) for k, v in l7.items()})


def rule(
    sources: Iterable[Source] = (),
    operations: Iterable[Operation] = (),
    when: Mapping[str, Iterable[str]] | None = None,
) -> Rule:
    """``when`` maps each condition's key to its values."""
    conditions = tuple(Condition(k, tuple(v)) for k, v in (when or {}).items())
    return Rule(tuple(sources), tuple(operations), conditions)


def allow(
    name: str = "allow",
    *rules: Rule,
    namespace: str = "default",
    selector: Mapping[str, str] | None = None,
    targets: Iterable[TargetRef] = (),
) -> Authorization:
    sel = None if selector is None else tuple(selector.items())
    return Authorization(name, namespace, "ALLOW", sel, rules, tuple(targets))


def deny(
    name: str = "deny",
    *rules: Rule,
    namespace: str = "default",
    selector: Mapping[str, str] | None = None,
    targets: Iterable[TargetRef] = (),
) -> Authorization:
    sel = None if selector is None else tuple(selector.items())
    return Authorization(name, namespace, "DENY", sel, rules, tuple(targets))


def audit(
    name: str = "audit",
    *rules: Rule,
    namespace: str = "default",
    targets: Iterable[TargetRef] = (),
) -> Authorization:
    return Authorization(name, namespace, "AUDIT", None, rules, tuple(targets))


def waypoint_ref(name: str = "waypoint") -> TargetRef:
    """A targetRef to the Gateway ``name``: the policy binds that waypoint."""
    return TargetRef(GATEWAY_GROUP, "Gateway", name)


def service_ref(name: str = "web") -> TargetRef:
    """A targetRef to the Service ``name``: the policy binds its waypoint, for its traffic."""
    return TargetRef("", "Service", name)


def class_ref(name: str = "istio-waypoint") -> TargetRef:
    """A targetRef to a GatewayClass: every waypoint of the class (root namespace only)."""
    return TargetRef(GATEWAY_GROUP, "GatewayClass", name)


def peer_auth(
    name: str,
    mode: str,
    *,
    namespace: str = "default",
    selector: Mapping[str, str] | None = None,
) -> PeerAuthentication:
    sel = None if selector is None else tuple(selector.items())
    return PeerAuthentication(name, namespace, sel, mode)  # type: ignore[arg-type]


def snapshot(*resources: Resource, version: int = 1) -> MeshSnapshot:
    return MeshSnapshot.from_resources(version, resources)


def conn(
    dst: Workload,
    *,
    src: SpiffeId | None = None,
    src_ip: str = "10.0.0.99",
    port: int = 8080,
) -> Connection:
    """A connection to ``dst``; ``src=None`` is plaintext (no peer identity)."""
    return Connection(src_ip, src, dst, port)
