"""The mesh model's policies: AuthorizationPolicy (Rule, Source, Operation, Condition,
TargetRef), PeerAuthentication and RequestAuthentication, as frozen JSON-form
dataclasses. L7 values are kept for the waypoint and ``l7`` names them, so ztunnel
applies Istio's rule for what it cannot check. Re-exported by :mod:`mesh.model`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

from mesh.constants import SYSTEM_NAMESPACE
from mesh.jsonform import JsonForm, ModelError
from mesh.model_checks import (
    Action,
    Keyed,
    Kind,
    MtlsMode,
    Pairs,
    _choice,
    _pairs,
    _port,
    selector_matches,
)
from mesh.model_l7 import JwtRule

if TYPE_CHECKING:
    from mesh.model_workloads import Workload


# --- Policy ----------------------------------------------------------------------------------

# The fields of a source or operation that only a waypoint can check, by their Istio names:
# they need a request (a JWT, a header, a method, a path) or a client address from a header.
_L7_SOURCE_FIELDS = {
    "request_principals": "requestPrincipals",
    "not_request_principals": "notRequestPrincipals",
    "remote_ip_blocks": "remoteIpBlocks",
    "not_remote_ip_blocks": "notRemoteIpBlocks",
}
_L7_OPERATION_FIELDS = {
    "hosts": "hosts",
    "not_hosts": "notHosts",
    "methods": "methods",
    "not_methods": "notMethods",
    "paths": "paths",
    "not_paths": "notPaths",
}

# What an AuthorizationPolicy's targetRefs may point at, as (group, kind); "" is the core
# group. ambit has no ServiceEntry objects, and a GatewayClass names no waypoint: such a
# reference binds nothing.
GATEWAY_GROUP = "gateway.networking.k8s.io"
TARGET_KINDS: tuple[tuple[str, str], ...] = (
    (GATEWAY_GROUP, "Gateway"),
    (GATEWAY_GROUP, "GatewayClass"),
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
)


def _blocks(blocks: tuple[str, ...]) -> None:
    for block in blocks:
        try:
            ipaddress.ip_network(block, strict=False)
        except ValueError:
            raise ModelError(f"ip block {block!r} is not an IP address or CIDR") from None


@dataclass(frozen=True)
class Source(JsonForm):
    """``from[].source`` of a rule: its fields are AND'd, the values of one field OR'd."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _blocks(self.ip_blocks + self.not_ip_blocks)
        _blocks(self.remote_ip_blocks + self.not_remote_ip_blocks)

    @cached_property
    def l7(self) -> tuple[str, ...]:
        """The Istio names of the fields set here that only a waypoint can check."""
        return tuple(name for f, name in _L7_SOURCE_FIELDS.items() if getattr(self, f))


@dataclass(frozen=True)
class Operation(JsonForm):
    """``to[].operation`` of a rule: its fields are AND'd, the values of one field OR'd."""

    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for port in self.ports + self.not_ports:
            _port(port, "operation")

    @cached_property
    def l7(self) -> tuple[str, ...]:
        """The Istio names of the fields set here that only a waypoint can check."""
        return tuple(name for f, name in _L7_OPERATION_FIELDS.items() if getattr(self, f))


@dataclass(frozen=True)
class Condition(JsonForm):
    """One ``when`` entry of a rule: the attribute ``key`` (``request.headers[x-user]``,
    ``source.ip``...) must have one of ``values`` (if any) and none of ``not_values``."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key:
            raise ModelError("condition: the key is empty")
        if not (self.values or self.not_values):
            raise ModelError(f"condition {self.key}: give values, not_values or both")


@dataclass(frozen=True)
class Rule(JsonForm):
    """Matches when one of ``sources`` (if any) and one of ``operations`` (if any) match, and
    every condition of ``when``."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    when: tuple[Condition, ...] = ()

    @cached_property
    def l7(self) -> tuple[str, ...]:
        """Every L7 field named anywhere in the rule, once each, in order; a condition counts
        as ``when:<key>`` (ztunnel checks none of them)."""
        named = [f for s in self.sources for f in s.l7] + [f for o in self.operations for f in o.l7]
        named += [f"when:{c.key}" for c in self.when]
        return tuple(dict.fromkeys(named))


@dataclass(frozen=True)
class TargetRef(JsonForm):
    """What a policy's ``targetRefs`` entry binds it to, in the policy's namespace: a waypoint
    (``Gateway``) or the waypoint serving a ``Service``. ``group`` "" is the core group."""

    group: str
    kind: str
    name: str

    def __post_init__(self) -> None:
        if (self.group, self.kind) not in TARGET_KINDS:
            known = ", ".join(f"{g or 'core'}/{k}" for g, k in TARGET_KINDS)
            raise ModelError(f"target {self.group}/{self.kind}: not one of {known}")
        if not self.name:
            raise ModelError(f"target {self.kind}: the name is empty")


@dataclass(frozen=True)
class Authorization(Keyed, JsonForm):
    """An AuthorizationPolicy. ``selector=None``: every workload of the namespace. A policy in
    the root namespace (``ambit-system``) applies across the whole mesh.

    A policy with ``target_refs`` binds the waypoints they name instead of selecting workloads,
    and an AUDIT policy only marks requests for an audit log: both are for waypoints
    (:attr:`for_waypoint`), and ztunnel never applies them."""

    kind: ClassVar[Kind] = "authorization"
    name: str
    namespace: str
    action: Action
    selector: Pairs | None
    rules: tuple[Rule, ...]
    target_refs: tuple[TargetRef, ...] = ()

    def __post_init__(self) -> None:
        what = f"authorization {self.key}"
        _choice(self.action, ("ALLOW", "DENY", "AUDIT"), f"{what}: action")
        if self.selector is not None:
            if self.target_refs:
                raise ModelError(f"{what}: give a selector or target refs, not both")
            object.__setattr__(self, "selector", _pairs(self.selector))

    @property
    def for_waypoint(self) -> bool:
        """Enforced only by the waypoints it binds, never by ztunnel."""
        return bool(self.target_refs) or self.action == "AUDIT"

    def applies_to(self, workload: Workload) -> bool:
        """Whether ztunnel applies this policy to connections to ``workload``."""
        if self.for_waypoint:
            return False
        in_scope = self.namespace in (workload.namespace, SYSTEM_NAMESPACE)
        return in_scope and selector_matches(self.selector, workload.labels)


@dataclass(frozen=True)
class PeerAuthentication(Keyed, JsonForm):
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


@dataclass(frozen=True)
class RequestAuthentication(Keyed, JsonForm):
    """A RequestAuthentication: which JWTs the workloads it selects (``selector``, None for
    the whole namespace; the root namespace's apply mesh-wide) or the waypoints it binds
    (``target_refs``) accept. A request with a token that fails every rule is refused; a
    request without one passes, for an AuthorizationPolicy to judge. Only a waypoint sees
    requests: ztunnel never applies it."""

    kind: ClassVar[Kind] = "request_authentication"
    name: str
    namespace: str
    selector: Pairs | None
    jwt_rules: tuple[JwtRule, ...]
    target_refs: tuple[TargetRef, ...] = ()

    def __post_init__(self) -> None:
        if self.selector is not None:
            if self.target_refs:
                raise ModelError(
                    f"request authentication {self.key}: give a selector or target refs, not both"
                )
            object.__setattr__(self, "selector", _pairs(self.selector))
