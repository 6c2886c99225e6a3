"""The checks and types every part of the mesh model shares (:mod:`mesh.model`,
:mod:`mesh.model_policy`): label pairs, ports, addresses, choices, and a selector's
match. Pure functions, no I/O."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import cached_property, lru_cache
from typing import Any, Literal, TypeAlias

from mesh.identity import SpiffeId
from mesh.jsonform import ModelError

Pairs: TypeAlias = tuple[tuple[str, str], ...]
Protocol: TypeAlias = Literal["HBONE", "TCP"]
Action: TypeAlias = Literal["ALLOW", "DENY", "AUDIT"]
MtlsMode: TypeAlias = Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]
Kind: TypeAlias = Literal[
    "workload",
    "service",
    "authorization",
    "peer_authentication",
    "request_authentication",
    "gateway",
    "http_route",
    "grpc_route",
    "destination_rule",
    "backend_traffic_policy",
    "fault_injection",
    "local_rate_limit",
]


# --- Validation helpers --------------------------------------------------------------------


def _pairs(items: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(items).items()))


# Pods of one Deployment have the same labels: put each tuple of pairs in normal form
# once (and share the result), for the model's constructors meant for many objects.
_sorted_pairs = lru_cache(maxsize=1 << 14)(_pairs)


def _normal_pairs(items: Iterable[tuple[Any, Any]]) -> tuple[tuple[Any, Any], ...]:
    """``_pairs(items)``, remembered when ``items`` can be (a tuple of tuples)."""
    try:
        return _sorted_pairs(items)  # type: ignore[arg-type]  # an unhashable one raises
    except TypeError:  # not hashable: a list, or pairs that are lists
        return _pairs(items)


def _port(value: int, what: str, *, zero_ok: bool = False) -> None:
    if type(value) is not int or not (0 if zero_ok else 1) <= value <= 65535:
        raise ModelError(f"{what}: port {value!r} is not an integer 1-65535")


def _ip(value: str, what: str) -> None:
    if not (_is_ip(value) if type(value) is str else _parses_as_ip(value)):
        raise ModelError(f"{what}: {value!r} is not an IP address")


# Dotted-quad IPv4 exactly as ipaddress reads it (ASCII digits, no leading zeros, 0-255):
# a quick yes for the common case; everything else is asked of ipaddress itself.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _parses_as_ip(value: object) -> bool:
    if type(value) is str and _IPV4.fullmatch(value):
        return True
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


# The same address is checked again and again (a workload's, then as an endpoint's in
# each of its Services, and again whenever either is rebuilt), and parsing costs more
# than the rest of a Workload: remember the answers for a bounded number of strings.
_is_ip = lru_cache(maxsize=1 << 16)(_parses_as_ip)


# Pods of one service account share an identity: check (and build) it once.
_spiffe_id = lru_cache(maxsize=4096)(SpiffeId)


def _choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ModelError(f"{what}: {value!r} is not one of {', '.join(allowed)}")


def selector_matches(selector: Pairs | None, labels: Pairs) -> bool:
    """Kubernetes ``matchLabels``: every pair present. ``None`` selects everything."""
    if selector is None:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def check(ok: bool, message: str) -> None:
    """:class:`ModelError` with ``message`` unless ``ok``."""
    if not ok:
        raise ModelError(message)


class Keyed:
    """Mixin for the model's namespaced objects: ``key`` is ``namespace/name``, computed
    once (the snapshot sorts and finds entries by it)."""

    namespace: str
    name: str

    @cached_property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
