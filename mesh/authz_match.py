"""The matching AuthorizationPolicy evaluation shares between ztunnel (L4, :mod:`mesh.authz`)
and the waypoint (L7, :mod:`waypoint.authz`): Istio's string match, addresses in ip blocks,
and the L4 fields of a source (principals, namespaces, ipBlocks and their ``not`` forms) and
of an operation (ports, notPorts). Pure functions.

Each matcher returns the conditions met, in words, for the log and ``ambit why``, or None
when the value does not match; given a ``why_not`` list, a matcher that fails appends the
condition that failed, in words (``ambit why``'s account of a rule that did not match: the
same functions, so it cannot disagree with the decision). A peer without an identity
(plaintext) never matches ``principals`` or ``namespaces`` and always matches their ``not`` forms.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from mesh.identity import SpiffeId
from mesh.model_policy import Operation, Source

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def wildcard(pattern: str, value: str) -> bool:
    """Istio's string match: ``*`` (any non-empty), ``prefix*``, ``*suffix`` or exact."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


@lru_cache(maxsize=1024)
def network(block: str) -> IpNetwork:
    """An ip block (an address or a CIDR, host bits allowed) as a network."""
    return ipaddress.ip_network(block, strict=False)


def parse_ip(text: str) -> IpAddress:
    """An address as policy sees it: an IPv4 peer seen by a dual-stack socket is IPv4."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


def blocks_match(
    label: str,
    ip: IpAddress,
    positive: tuple[str, ...],
    negative: tuple[str, ...],
    why_not: list[str] | None = None,
) -> list[str] | None:
    """``ip`` in one of ``positive`` (if any) and in none of ``negative``."""
    met: list[str] = []
    if positive:
        block = next((b for b in positive if ip in network(b)), None)
        if block is None:
            if why_not is not None:
                why_not.append(f"{label} {ip} not in [{', '.join(positive)}]")
            return None
        met.append(f"{label} {ip} in {block}")
    if negative:
        if any(ip in network(b) for b in negative):
            if why_not is not None:
                why_not.append(f"{label} {ip} in excluded [{', '.join(negative)}]")
            return None
        met.append(f"{label} {ip} not in [{', '.join(negative)}]")
    return met


def strings_match(
    label: str,
    value: str | None,
    positive: tuple[str, ...],
    negative: tuple[str, ...],
    *,
    absent: str = "none",
    fold_case: bool = False,
    why_not: list[str] | None = None,
) -> list[str] | None:
    """``value`` matches one of ``positive`` (if any) and none of ``negative`` (Istio's
    wildcards). None (no such value) never matches ``positive`` and always passes
    ``negative``; ``absent`` says how to show it. ``fold_case`` compares case-insensitively."""
    met: list[str] = []
    folded = value.lower() if fold_case and value is not None else value

    def hit(pattern: str) -> bool:
        assert folded is not None
        return wildcard(pattern.lower() if fold_case else pattern, folded)

    shown = value if value is not None else absent
    if positive:
        if folded is None or not any(hit(p) for p in positive):
            if why_not is not None:
                why_not.append(f"{label} {shown} not in [{', '.join(positive)}]")
            return None
        met.append(f"{label} {value}")
    if negative:
        if folded is not None and any(hit(p) for p in negative):
            if why_not is not None:
                why_not.append(f"{label} {shown} in excluded [{', '.join(negative)}]")
            return None
        met.append(f"{label} {shown} not in [{', '.join(negative)}]")
    return met


def peer_matches(
    source: Source, identity: SpiffeId | None, ip: str, why_not: list[str] | None = None
) -> list[str] | None:
    """The L4 fields of ``source`` (principals, namespaces, ipBlocks and ``not`` forms)
    against the peer: its identity (None: plaintext) and address."""
    met: list[str] = []
    principal = identity.principal if identity else None
    namespace = identity.namespace if identity else None
    for label, value, positive, negative in (
        ("principal", principal, source.principals, source.not_principals),
        ("namespace", namespace, source.namespaces, source.not_namespaces),
    ):
        if positive or negative:
            found = strings_match(
                label, value, positive, negative, absent="none (plaintext)", why_not=why_not
            )
            if found is None:
                return None
            met += found
    if not (source.ip_blocks or source.not_ip_blocks):
        return met  # no address to check: skip parsing it (the common case)
    found = blocks_match("source ip", parse_ip(ip), source.ip_blocks, source.not_ip_blocks, why_not)
    return None if found is None else met + found


def port_matches(op: Operation, port: int, why_not: list[str] | None = None) -> list[str] | None:
    """``ports`` and ``notPorts`` of ``op`` against the destination port."""
    met: list[str] = []
    if op.ports:
        if port not in op.ports:
            if why_not is not None:
                why_not.append(f"port {port} not in [{', '.join(map(str, op.ports))}]")
            return None
        met.append(f"port {port}")
    if op.not_ports:
        if port in op.not_ports:
            if why_not is not None:
                why_not.append(f"port {port} in excluded [{', '.join(map(str, op.not_ports))}]")
            return None
        met.append(f"port {port} not in [{', '.join(map(str, op.not_ports))}]")
    return met
