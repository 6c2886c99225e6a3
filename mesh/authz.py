"""L4 authorization at ztunnel: Istio's AuthorizationPolicy and PeerAuthentication semantics,
as pure functions of a connection and the model.

``evaluate``: a matching DENY policy denies; otherwise, if any ALLOW policy selects the
destination, one of them must match; with none, the connection is allowed. Rules are
OR'd; inside a rule the sources, operations are each OR'd and AND'd with each other;
the fields of a source or operation are AND'd and the values of one field OR'd.

What ztunnel cannot see (L7 fields and ``when`` conditions, which the model names in a
rule's ``l7``) follows Istio's ztunnel: an ALLOW rule naming any never matches, so it
cannot widen access; a DENY rule is applied on its L4 part alone, so it cannot narrow a
denial.

A plaintext connection has no identity: it never matches ``principals`` or
``namespaces`` and always matches ``notPrincipals`` / ``notNamespaces``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from mesh.identity import SpiffeId
from mesh.model import (
    Authorization,
    MeshSnapshot,
    Operation,
    Rule,
    Source,
    Workload,
)

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


@dataclass(frozen=True)
class Connection:
    """What ztunnel knows of an inbound connection (``src_identity`` None: plaintext)."""

    src_ip: str
    src_identity: SpiffeId | None
    dst_workload: Workload
    dst_port: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str | None  # "namespace/name" of the policy that decided, if one did
    reason: str  # for the operator reading the log


def evaluate(conn: Connection, policies: Iterable[Authorization]) -> Decision:
    """Decide ``conn`` against ``policies``; those not selecting the destination are ignored."""
    dst = f"{conn.dst_workload.namespace}/{conn.dst_workload.name}"
    selecting = sorted(
        (p for p in policies if p.applies_to(conn.dst_workload)), key=lambda p: p.key
    )
    for policy in (p for p in selecting if p.action == "DENY"):
        for i, rule in enumerate(policy.rules, start=1):
            why = _rule_matches(rule, conn)
            if why is not None:
                if rule.l7:
                    why += f"; its L7 fields ({', '.join(rule.l7)}) are not checked at L4"
                reason = f"denied by DENY policy {policy.key} (rule {i}: {why})"
                return Decision(False, policy.key, reason)
    allows = [p for p in selecting if p.action == "ALLOW"]
    if not allows:
        return Decision(True, None, f"allowed: no ALLOW policy selects {dst}")
    skipped = 0
    for policy in allows:
        for i, rule in enumerate(policy.rules, start=1):
            if rule.l7:
                skipped += 1
                continue
            why = _rule_matches(rule, conn)
            if why is not None:
                return Decision(
                    True, policy.key, f"allowed by ALLOW policy {policy.key} (rule {i}: {why})"
                )
    if len(allows) == 1:
        reason = f"the only ALLOW policy selecting {dst}, {allows[0].key}, did not match"
    else:
        reason = f"no ALLOW policy of the {len(allows)} selecting {dst} matched"
    if skipped:
        reason += (
            f" ({skipped} ALLOW rule(s) with L7 fields never match at ztunnel;"
            " a waypoint is needed to enforce them)"
        )
    return Decision(False, None, reason)


def _rule_matches(rule: Rule, conn: Connection) -> str | None:
    """Why ``rule`` matches ``conn`` (the conditions met, for the log), or None."""
    met: list[str] = []
    if rule.sources:
        found = next((w for s in rule.sources if (w := _source_matches(s, conn)) is not None), None)
        if found is None:
            return None
        met += found
    if rule.operations:
        found = next((w for o in rule.operations if (w := _op_matches(o, conn)) is not None), None)
        if found is None:
            return None
        met += found
    return ", ".join(met) or "matches every connection"


def _source_matches(source: Source, conn: Connection) -> list[str] | None:
    identity = conn.src_identity
    principal = identity.principal if identity else None
    namespace = identity.namespace if identity else None
    met: list[str] = []
    for label, value, positive, negative in (
        ("principal", principal, source.principals, source.not_principals),
        ("namespace", namespace, source.namespaces, source.not_namespaces),
    ):
        shown = value if value is not None else "none (plaintext)"
        if positive:
            if value is None or not any(_wildcard(p, value) for p in positive):
                return None
            met.append(f"{label} {value}")
        if negative:
            if value is not None and any(_wildcard(p, value) for p in negative):
                return None
            met.append(f"{label} {shown} not in [{', '.join(negative)}]")
    if not (source.ip_blocks or source.not_ip_blocks):
        return met  # no address to check: skip parsing it (the common case)
    ip = ipaddress.ip_address(conn.src_ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    if source.ip_blocks:
        block = next((b for b in source.ip_blocks if ip in _network(b)), None)
        if block is None:
            return None
        met.append(f"source ip {ip} in {block}")
    if source.not_ip_blocks:
        if any(ip in _network(b) for b in source.not_ip_blocks):
            return None
        met.append(f"source ip {ip} not in [{', '.join(source.not_ip_blocks)}]")
    return met


def _op_matches(op: Operation, conn: Connection) -> list[str] | None:
    met: list[str] = []
    if op.ports:
        if conn.dst_port not in op.ports:
            return None
        met.append(f"port {conn.dst_port}")
    if op.not_ports:
        if conn.dst_port in op.not_ports:
            return None
        met.append(f"port {conn.dst_port} not in [{', '.join(map(str, op.not_ports))}]")
    return met


def _wildcard(pattern: str, value: str) -> bool:
    """Istio's string match: ``*`` (any non-empty), ``prefix*``, ``*suffix`` or exact."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


@lru_cache(maxsize=1024)
def _network(block: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(block, strict=False)


def peer_auth_mode(snapshot: MeshSnapshot, workload: Workload) -> Mode:
    """The mTLS mode for ``workload``: a PeerAuthentication selecting it by label beats its
    namespace's, which beats the mesh-wide one of the root namespace; UNSET defers to the
    next level; with none set, PERMISSIVE. Ties at one level go to the first by name."""
    for pa in snapshot.peer_authentication_for(workload):
        if pa.mode != "UNSET":
            return pa.mode
    return "PERMISSIVE"
