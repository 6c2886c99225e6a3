"""The mesh model's workloads and Services (ports and endpoints), re-exported by
:mod:`mesh.model`. Each has its dataclass constructor, which checks everything (what
JSON from the config stream goes through), and ``build``: the same value for callers
that make thousands (the control plane's translation of a cluster), with every check
made but each remembered per distinct value. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import Any, ClassVar, TypeVar

from mesh.constants import DEFAULT_CLUSTER_DOMAIN, DEFAULT_TRUST_DOMAIN
from mesh.identity import IdentityError, SpiffeId
from mesh.jsonform import JsonForm, ModelError
from mesh.model_checks import (
    Keyed,
    Kind,
    Pairs,
    Protocol,
    _choice,
    _ip,
    _is_ip,
    _normal_pairs,
    _pairs,
    _port,
    _spiffe_id,
)


def _waypoint_key(key: str | None, what: str) -> None:
    if key is not None and not _is_waypoint_key(key):
        raise ModelError(f"{what}: waypoint {key!r} is not namespace/name")


def _is_waypoint_key(key: str) -> bool:
    return key.count("/") == 1 and "" not in key.split("/")


# The ``build`` constructors below: the value the dataclass constructor makes, for callers
# that make thousands (the control plane's translation of a whole cluster). Every check
# of ``__post_init__`` is made, but each per distinct value where it costs (an address,
# an identity, a tuple of pairs), and the fields are set at once; when a check fails, the
# constructor is called instead, to raise what it raises.

_T = TypeVar("_T")


def _good_ip(value: object) -> bool:
    return type(value) is str and _is_ip(value)


def _good_port(port: object) -> bool:
    return type(port) is int and 1 <= port <= 65535


def _made(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of the frozen dataclass ``cls`` with ``fields`` as they are: every field,
    checked and in normal form, and the values of cached properties. A dict literal, not
    keyword arguments: with a Workload's fifteenth field (locality), gathering them took
    30% more instructions per build under CPython 3.11 (callgrind); a dict is cheaper
    than either."""
    made = object.__new__(cls)
    made.__dict__.update(fields)
    return made


@dataclass(frozen=True)
class Locality(JsonForm):
    """Where a workload runs (ztunnel's ``Locality``): its node's
    ``topology.kubernetes.io/region`` and ``zone``; ``subzone`` is Istio's
    ``topology.istio.io/subzone``, unset today. For locality-aware load balancing."""

    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True)
class Workload(JsonForm):
    """One pod. ``protocol="HBONE"``: in the mesh (captured by ztunnel); ``"TCP"``: not.
    ``container_ports`` are the named ones, ``(name, port)``, for named targetPorts.
    ``waypoint`` is the key (``ns/name``) of the waypoint traffic to this pod must cross,
    or None. ``native_tunnel`` (ztunnel's name): the pod speaks HBONE itself, as a
    waypoint does: it is in the mesh (``HBONE``, its own identity, its own 15008), but
    no ztunnel captures it or holds its identity. ``locality``: its node's region and
    zone, None when the node has neither (or is unknown)."""

    kind: ClassVar[Kind] = "workload"
    uid: str
    name: str
    namespace: str
    service_account: str
    node: str
    ip: str
    labels: Pairs
    protocol: Protocol
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    container_ports: tuple[tuple[str, int], ...] = ()
    waypoint: str | None = None
    native_tunnel: bool = False
    locality: Locality | None = None

    def __post_init__(self) -> None:
        what = f"workload {self.uid}"
        _ip(self.ip, what)
        _waypoint_key(self.waypoint, what)
        _choice(self.protocol, ("HBONE", "TCP"), f"{what}: protocol")
        for name, port in self.container_ports:
            _port(port, f"{what}: container port {name}")
        try:
            identity = _spiffe_id(self.trust_domain, self.namespace, self.service_account)
        except IdentityError as exc:
            raise ModelError(f"{what}: {exc}") from None
        self.__dict__["identity"] = identity  # checked: the cached_property's value
        object.__setattr__(self, "labels", _pairs(self.labels))
        object.__setattr__(self, "container_ports", _pairs(self.container_ports))

    @classmethod
    def build(
        cls,
        uid: str,
        name: str,
        namespace: str,
        service_account: str,
        node: str,
        ip: str,
        labels: Pairs,
        protocol: Protocol,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        container_ports: tuple[tuple[str, int], ...] = (),
        waypoint: str | None = None,
        native_tunnel: bool = False,
        locality: Locality | None = None,
    ) -> Workload:
        """``Workload(...)``, for callers that make thousands (see the module docstring)."""
        try:
            identity = _spiffe_id(trust_domain, namespace, service_account)
        except IdentityError:
            identity = None
        if (
            identity is None
            or not _good_ip(ip)
            or (waypoint is not None and not _is_waypoint_key(waypoint))
            or protocol not in ("HBONE", "TCP")
            or not all(_good_port(port) for _, port in container_ports)
        ):
            return cls(uid, name, namespace, service_account, node, ip, labels, protocol,
                       trust_domain, container_ports, waypoint, native_tunnel,
                       locality)  # fmt: skip
        return _made(
            cls,
            {
                "uid": uid,
                "name": name,
                "namespace": namespace,
                "service_account": service_account,
                "node": node,
                "ip": ip,
                "labels": _normal_pairs(labels),
                "protocol": protocol,
                "trust_domain": trust_domain,
                "container_ports": _normal_pairs(container_ports),
                "waypoint": waypoint,
                "native_tunnel": native_tunnel,
                "locality": locality,
                "identity": identity,
                "key": uid,
            },
        )

    @cached_property
    def key(self) -> str:
        return self.uid

    @cached_property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)

    @property
    def meshed(self) -> bool:
        return self.protocol == "HBONE"

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class ServicePort(JsonForm):
    """A port of a Service. A named targetPort has ``target_port=0`` and ``target_port_name``;
    its number is resolved per pod, in each :class:`Endpoint`. ``app_protocol`` is the
    Service's ``appProtocol`` as given (``http``, ``kubernetes.io/h2c``...), "" if unset."""

    port: int
    target_port: int
    name: str = ""
    protocol: str = "TCP"
    target_port_name: str = ""
    app_protocol: str = ""

    def __post_init__(self) -> None:
        _port(self.port, "service port")
        _port(self.target_port, f"service port {self.port}: target", zero_ok=True)
        if (self.target_port == 0) == (self.target_port_name == ""):
            raise ModelError(
                f"service port {self.port}: give exactly one of a target port number and a name"
            )


@dataclass(frozen=True)
class Endpoint(JsonForm):
    """A backend of a Service: ``ports`` maps each service port to the target port on it.
    Usually a pod: ``workload_uid`` is its workload's. An address that is no pod (an
    EndpointSlice's external IP, a VM) has a ``workload_uid`` no workload has
    (``namespace/service/address``): it is outside the mesh, so a ztunnel sends it plain
    TCP (ztunnel's plan: a passthrough), as to any workload that is not meshed."""

    workload_uid: str
    ip: str
    ports: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        _ip(self.ip, f"endpoint {self.workload_uid}")
        for port, target in self.ports:
            _port(port, f"endpoint {self.workload_uid}")
            _port(target, f"endpoint {self.workload_uid}: target")
        object.__setattr__(self, "ports", tuple(sorted(dict(self.ports).items())))

    @classmethod
    def build(cls, workload_uid: str, ip: str, ports: tuple[tuple[int, int], ...]) -> Endpoint:
        """``Endpoint(...)``, for callers that make thousands (see the module docstring)."""
        if not _good_ip(ip) or not all(_good_port(p) and _good_port(t) for p, t in ports):
            return cls(workload_uid, ip, ports)
        return _made(cls, {"workload_uid": workload_uid, "ip": ip, "ports": _normal_pairs(ports)})

    def target_for(self, service_port: int) -> int | None:
        return dict(self.ports).get(service_port)


@dataclass(frozen=True)
class Service(Keyed, JsonForm):
    """A Service with its ports and endpoints. ``waypoint`` is the key (``ns/name``) of the
    waypoint its traffic must cross (the waypoint's Gateway, and the Service in front of
    the waypoint's pods, which has the same key), or None."""

    kind: ClassVar[Kind] = "service"
    name: str
    namespace: str
    vip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    waypoint: str | None = None

    def __post_init__(self) -> None:
        _ip(self.vip, f"service {self.key}")
        _waypoint_key(self.waypoint, f"service {self.key}")
        object.__setattr__(self, "ports", tuple(sorted(self.ports, key=lambda p: p.port)))
        endpoints = tuple(sorted(self.endpoints, key=lambda e: e.workload_uid))
        object.__setattr__(self, "endpoints", endpoints)

    @classmethod
    def build(
        cls,
        name: str,
        namespace: str,
        vip: str,
        ports: tuple[ServicePort, ...],
        endpoints: tuple[Endpoint, ...],
        waypoint: str | None = None,
    ) -> Service:
        """``Service(...)``, for callers that make thousands (see the module docstring)."""
        if not _good_ip(vip) or (waypoint is not None and not _is_waypoint_key(waypoint)):
            return cls(name, namespace, vip, ports, endpoints, waypoint)
        return _made(
            cls,
            {
                "name": name,
                "namespace": namespace,
                "vip": vip,
                "ports": tuple(sorted(ports, key=_port_number)),
                "endpoints": tuple(sorted(endpoints, key=_workload_uid)),
                "waypoint": waypoint,
                "key": f"{namespace}/{name}",
            },
        )

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{DEFAULT_CLUSTER_DOMAIN}"

    def port(self, port: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == port), None)


_port_number = attrgetter("port")
_workload_uid = attrgetter("workload_uid")
