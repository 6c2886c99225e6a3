"""The mesh model: the plain frozen dataclasses every ambit process shares.

Owns Workload, Service (ports and endpoints), the L4 policy objects
(Authorization with Rule / Source / Operation, PeerAuthentication), the
versioned MeshSnapshot with its lookups, and Delta with ``diff`` / ``apply``
for incremental config updates. Pure data, no I/O.

JSON form: every class has ``to_json() -> dict`` and ``from_json(data)``. Keys
are the field names, all present; tuples become lists; string-keyed pair tuples
(labels, selectors, container ports) become objects; other pairs (an
Endpoint's ``[service_port, target_port]``) become two-element lists; ``None``
is ``null``. A Delta tags each upsert with its kind. Unknown, missing or
mistyped keys raise :class:`ModelError` naming the path (``Service.ports[0].port``).
Collections are normalised (labels sorted, snapshot entries sorted by key), so
equal content compares equal.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import types
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import (
    Any,
    ClassVar,
    Literal,
    Self,
    TypeAlias,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from mesh.constants import DEFAULT_TRUST_DOMAIN, SYSTEM_NAMESPACE
from mesh.identity import IdentityError, SpiffeId

Json: TypeAlias = dict[str, Any]
Pairs: TypeAlias = tuple[tuple[str, str], ...]
Protocol: TypeAlias = Literal["HBONE", "TCP"]
Action: TypeAlias = Literal["ALLOW", "DENY"]
MtlsMode: TypeAlias = Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]
Kind: TypeAlias = Literal["workload", "service", "authorization", "peer_authentication"]


class ModelError(ValueError):
    """Model data is malformed, or a delta does not fit the snapshot it is applied to."""


# --- JSON, driven by the dataclass field types -------------------------------------------


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The dataclass fields of ``cls`` and their (resolved) types, in order."""
    if cls not in _HINTS:
        hints = get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _encode(value: Any, hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if value is None or origin in (Literal, dict) or hint in (str, int):
        return value
    if origin in (Union, types.UnionType) and type(None) in args:
        return _encode(value, next(a for a in args if a is not type(None)))
    if origin in (Union, types.UnionType):  # a Resource, tagged with its kind
        return {"kind": value.kind, "value": value.to_json()}
    if origin is tuple:
        item = args[0]
        if get_origin(item) is tuple and get_args(item)[0] is str:
            return dict(value)
        return [_encode(v, item) for v in value]  # a list, or a pair as a two-element list
    return value.to_json()


def _decode(value: object, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType) and type(None) in args:
        return None if value is None else _decode(value, args[0], where)
    if origin in (Union, types.UnionType):  # a Resource, tagged with its kind
        tagged = _Tagged._decode(value, where)
        return _TYPES[tagged.kind]._decode(tagged.value, f"{where}.value")
    if origin is Literal:
        if value not in args:
            raise ModelError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if hint in (str, int) or origin is dict:
        if not isinstance(value, origin or hint) or isinstance(value, bool):
            raise ModelError(f"{where}: expected {(origin or hint).__name__}, got {value!r}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:  # one pair
        if not (isinstance(value, list) and len(value) == 2):
            raise ModelError(f"{where}: expected a two-element list, got {value!r}")
        return (_decode(value[0], args[0], where), _decode(value[1], args[1], where))
    if origin is tuple:
        item = args[0]
        if get_origin(item) is tuple and get_args(item)[0] is str:
            if not isinstance(value, dict):
                raise ModelError(f"{where}: expected an object, got {value!r}")
            value_type = get_args(item)[1]
            return tuple((str(k), _decode(v, value_type, f"{where}.{k}")) for k, v in value.items())
        if not isinstance(value, list):
            raise ModelError(f"{where}: expected a list, got {value!r}")
        return tuple(_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    return hint._decode(value, where)


class _Json:
    """Mixin: ``to_json`` / ``from_json`` for a frozen dataclass of the types above."""

    def to_json(self) -> Json:
        return {name: _encode(getattr(self, name), h) for name, h in _hints(type(self)).items()}

    @classmethod
    def from_json(cls, data: object) -> Self:
        return cls._decode(data, cls.__name__)

    @classmethod
    def _decode(cls, data: object, where: str) -> Self:
        hints = _hints(cls)
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in hints)
        if unknown:
            raise ModelError(
                f"{where}: unknown field {', '.join(unknown)} (fields: {', '.join(hints)})"
            )
        missing = [k for k in hints if k not in data]
        if missing:
            raise ModelError(f"{where}: missing field {', '.join(missing)}")
        values = {k: _decode(data[k], h, f"{where}.{k}") for k, h in hints.items()}
        return cls(**values)


# --- Validation helpers --------------------------------------------------------------------


def _pairs(items: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(items).items()))


def _port(value: int, what: str, *, zero_ok: bool = False) -> None:
    if type(value) is not int or not (0 if zero_ok else 1) <= value <= 65535:
        raise ModelError(f"{what}: port {value!r} is not an integer 1-65535")


def _ip(value: str, what: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ModelError(f"{what}: {value!r} is not an IP address") from None


def _choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ModelError(f"{what}: {value!r} is not one of {', '.join(allowed)}")


def selector_matches(selector: Pairs | None, labels: Pairs) -> bool:
    """Kubernetes ``matchLabels``: every pair present. ``None`` selects everything."""
    if selector is None:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


# --- Workloads and services ----------------------------------------------------------------


@dataclass(frozen=True)
class Workload(_Json):
    """One pod. ``protocol="HBONE"``: in the mesh (captured by ztunnel); ``"TCP"``: not.
    ``container_ports`` are the named ones, ``(name, port)``, for named targetPorts."""

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

    def __post_init__(self) -> None:
        what = f"workload {self.uid}"
        _ip(self.ip, what)
        _choice(self.protocol, ("HBONE", "TCP"), f"{what}: protocol")
        for name, port in self.container_ports:
            _port(port, f"{what}: container port {name}")
        try:
            SpiffeId(self.trust_domain, self.namespace, self.service_account)
        except IdentityError as exc:
            raise ModelError(f"{what}: {exc}") from None
        object.__setattr__(self, "labels", _pairs(self.labels))
        object.__setattr__(self, "container_ports", _pairs(self.container_ports))

    @property
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
class ServicePort(_Json):
    """A port of a Service. A named targetPort has ``target_port=0`` and ``target_port_name``;
    its number is resolved per pod, in each :class:`Endpoint`."""

    port: int
    target_port: int
    name: str = ""
    protocol: str = "TCP"
    target_port_name: str = ""

    def __post_init__(self) -> None:
        _port(self.port, "service port")
        _port(self.target_port, f"service port {self.port}: target", zero_ok=True)
        if (self.target_port == 0) == (self.target_port_name == ""):
            raise ModelError(
                f"service port {self.port}: give exactly one of a target port number and a name"
            )


@dataclass(frozen=True)
class Endpoint(_Json):
    """A pod behind a Service: ``ports`` maps each service port to the target port on this pod."""

    workload_uid: str
    ip: str
    ports: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        _ip(self.ip, f"endpoint {self.workload_uid}")
        for port, target in self.ports:
            _port(port, f"endpoint {self.workload_uid}")
            _port(target, f"endpoint {self.workload_uid}: target")
        object.__setattr__(self, "ports", tuple(sorted(dict(self.ports).items())))

    def target_for(self, service_port: int) -> int | None:
        return dict(self.ports).get(service_port)


@dataclass(frozen=True)
class Service(_Json):
    """A Service with its ports and endpoints. ``waypoint`` is the key (``ns/name``) of the
    Service of the waypoint its traffic must cross, or None."""

    kind: ClassVar[Kind] = "service"
    name: str
    namespace: str
    vip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    waypoint: str | None = None

    def __post_init__(self) -> None:
        _ip(self.vip, f"service {self.key}")
        object.__setattr__(self, "ports", tuple(sorted(self.ports, key=lambda p: p.port)))
        endpoints = tuple(sorted(self.endpoints, key=lambda e: e.workload_uid))
        object.__setattr__(self, "endpoints", endpoints)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    def port(self, port: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == port), None)


# --- Policy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source(_Json):
    """``from[].source`` of a rule. ``l7`` names fields present that only a waypoint can check
    (``requestPrincipals``, ``remoteIpBlocks``...)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    l7: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for block in self.ip_blocks + self.not_ip_blocks:
            try:
                ipaddress.ip_network(block, strict=False)
            except ValueError:
                raise ModelError(f"ip block {block!r} is not an IP address or CIDR") from None


@dataclass(frozen=True)
class Operation(_Json):
    """``to[].operation`` of a rule. ``l7`` names fields present that only a waypoint can check
    (hosts, methods, paths..., and ``when:<key>`` for the rule's conditions)."""

    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    l7: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for port in self.ports + self.not_ports:
            _port(port, "operation")


@dataclass(frozen=True)
class Rule(_Json):
    """Matches when one of ``sources`` (if any) and one of ``operations`` (if any) match."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()

    @property
    def l7(self) -> tuple[str, ...]:
        """Every L7 field named anywhere in the rule, once each, in order."""
        named = [f for s in self.sources for f in s.l7] + [f for o in self.operations for f in o.l7]
        return tuple(dict.fromkeys(named))


@dataclass(frozen=True)
class Authorization(_Json):
    """An AuthorizationPolicy at L4. ``selector=None``: every workload of the namespace. A policy
    in the root namespace (``ambit-system``) applies across the whole mesh."""

    kind: ClassVar[Kind] = "authorization"
    name: str
    namespace: str
    action: Action
    selector: Pairs | None
    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        _choice(self.action, ("ALLOW", "DENY"), f"authorization {self.key}: action")
        if self.selector is not None:
            object.__setattr__(self, "selector", _pairs(self.selector))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def applies_to(self, workload: Workload) -> bool:
        in_scope = self.namespace in (workload.namespace, SYSTEM_NAMESPACE)
        return in_scope and selector_matches(self.selector, workload.labels)


@dataclass(frozen=True)
class PeerAuthentication(_Json):
    kind: ClassVar[Kind] = "peer_authentication"
    name: str
    namespace: str
    selector: Pairs | None
    mode: MtlsMode

    def __post_init__(self) -> None:
        modes = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")
        _choice(self.mode, modes, f"peer authentication {self.key}: mode")
        if self.selector is not None:
            object.__setattr__(self, "selector", _pairs(self.selector))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


Resource: TypeAlias = Workload | Service | Authorization | PeerAuthentication
_TYPES: dict[str, type[Resource]] = {
    "workload": Workload,
    "service": Service,
    "authorization": Authorization,
    "peer_authentication": PeerAuthentication,
}
_COLLECTIONS: dict[Kind, str] = {
    "workload": "workloads",
    "service": "services",
    "authorization": "authorizations",
    "peer_authentication": "peer_authentications",
}


# --- Snapshots and deltas ------------------------------------------------------------------


@dataclass(frozen=True)
class MeshSnapshot(_Json):
    """Everything a proxy needs, at one version. Entries are kept sorted by key; keys are unique."""

    version: int
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    authorizations: tuple[Authorization, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()

    def __post_init__(self) -> None:
        for name in _COLLECTIONS.values():
            entries: list[Resource] = sorted(getattr(self, name), key=lambda r: r.key)
            for a, b in itertools.pairwise(entries):
                if a.key == b.key:
                    raise ModelError(f"snapshot v{self.version}: two {a.kind}s with key {a.key}")
            object.__setattr__(self, name, tuple(entries))

    @classmethod
    def from_resources(cls, version: int, resources: Iterable[Resource]) -> MeshSnapshot:
        groups: dict[str, list[Any]] = {name: [] for name in _COLLECTIONS.values()}
        for r in resources:
            groups[_COLLECTIONS[r.kind]].append(r)
        return cls(version, **{name: tuple(entries) for name, entries in groups.items()})

    def resources(self) -> Iterable[Resource]:
        for name in _COLLECTIONS.values():
            yield from getattr(self, name)

    @cached_property
    def _by_uid(self) -> dict[str, Workload]:
        return {w.uid: w for w in self.workloads}

    @cached_property
    def _by_ip(self) -> dict[str, Workload]:
        return {w.ip: w for w in reversed(self.workloads)}  # first by uid wins

    @cached_property
    def _by_key(self) -> dict[str, Service]:
        return {s.key: s for s in self.services}

    def service(self, key: str) -> Service | None:
        """The Service ``namespace/name``."""
        return self._by_key.get(key)

    @cached_property
    def _by_vip(self) -> dict[str, Service]:
        return {s.vip: s for s in reversed(self.services)}

    def workload(self, uid: str) -> Workload | None:
        return self._by_uid.get(uid)

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def service_by_vip(self, ip: str) -> Service | None:
        return self._by_vip.get(ip)

    def workloads_on_node(self, node: str) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.node == node)

    def policies_for(self, workload: Workload) -> tuple[Authorization, ...]:
        """The AuthorizationPolicies selecting ``workload`` (its namespace's and the root's).

        Selection depends only on the namespace and labels, and the snapshot never
        changes, so it is computed once per (namespace, labels) and remembered."""
        key = (workload.namespace, workload.labels)
        found = self._policies_by_selection.get(key)
        if found is None:
            found = tuple(a for a in self.authorizations if a.applies_to(workload))
            self._policies_by_selection[key] = found
        return found

    @cached_property
    def _policies_by_selection(self) -> dict[tuple[str, Pairs], tuple[Authorization, ...]]:
        return {}

    @cached_property
    def _service_by_endpoint(self) -> dict[tuple[str, int], Service]:
        index: dict[tuple[str, int], Service] = {}
        for service in self.services:  # sorted by key: the first one wins
            for endpoint in service.endpoints:
                for _, target in endpoint.ports:
                    index.setdefault((endpoint.workload_uid, target), service)
        return index

    def service_of_endpoint(self, uid: str, port: int) -> Service | None:
        """The Service whose endpoint ``uid`` serves target ``port`` (what inbound metrics
        report); the first by key when several do."""
        return self._service_by_endpoint.get((uid, port))

    def peer_authentication_for(self, workload: Workload) -> tuple[PeerAuthentication, ...]:
        """The PeerAuthentications that apply, most specific first: those of the workload's
        namespace selecting it by label, then its namespace-wide ones, then the mesh-wide ones
        (root namespace, no selector). The first whose mode is not UNSET decides."""
        own = [p for p in self.peer_authentications if p.namespace == workload.namespace]
        by_label = [
            p
            for p in own
            if p.selector is not None and selector_matches(p.selector, workload.labels)
        ]
        namespace_wide = [p for p in own if p.selector is None]
        mesh_wide = [
            p
            for p in self.peer_authentications
            if p.namespace == SYSTEM_NAMESPACE and p.selector is None and p not in namespace_wide
        ]
        return (*by_label, *namespace_wide, *mesh_wide)


@dataclass(frozen=True)
class Delta(_Json):
    """What turns snapshot ``from_version`` into ``to_version``: entries added or replaced
    (``upserts``) and the ``(kind, key)`` of entries removed.

    JSON: ``removes`` is a list of ``[kind, key]``; each upsert is ``{"kind", "value"}``.
    """

    from_version: int
    to_version: int
    upserts: tuple[Resource, ...] = ()
    removes: tuple[tuple[Kind, str], ...] = ()


def diff(old: MeshSnapshot, new: MeshSnapshot) -> Delta:
    """The delta that turns ``old`` into ``new``: ``apply(old, diff(old, new)) == new``."""
    before, after = _index(old), _index(new)
    upserts = tuple(r for k, r in sorted(after.items()) if before.get(k) != r)
    removes = tuple(sorted(k for k in before if k not in after))
    return Delta(old.version, new.version, upserts, removes)


def apply(snapshot: MeshSnapshot, delta: Delta) -> MeshSnapshot:
    """``snapshot`` with ``delta`` applied; the delta must start from the snapshot's version."""
    span = f"delta v{delta.from_version}->v{delta.to_version}"
    if delta.from_version != snapshot.version:
        raise ModelError(
            f"{span} does not apply to snapshot v{snapshot.version};"
            " ask the control plane for a full snapshot"
        )
    entries = _index(snapshot)
    for kind, key in delta.removes:
        if entries.pop((kind, key), None) is None:
            raise ModelError(f"{span} removes {kind} {key}, absent from v{snapshot.version}")
    for r in delta.upserts:
        entries[(r.kind, r.key)] = r
    return MeshSnapshot.from_resources(delta.to_version, entries.values())


def _index(snapshot: MeshSnapshot) -> dict[tuple[Kind, str], Resource]:
    return {(r.kind, r.key): r for r in snapshot.resources()}


@dataclass(frozen=True)
class _Tagged(_Json):
    """The JSON envelope of one upsert of a Delta."""

    kind: Kind
    value: Json
