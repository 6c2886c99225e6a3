"""What the waypoint's L7 policy sees of one request, as frozen values: the waypoint itself
(:class:`WaypointScope`, and which policies it binds), the request (:class:`L7Request`) and
the JWT it carried, once verified (:class:`RequestAuth`). Pure data; no I/O.

**Which policies a waypoint applies** (Istio's ambient rules): a policy binds the waypoint
through its ``targetRefs`` only, never through a ``selector`` (a selector policy, in the root
namespace too, is ztunnel's). A ref binds:

- ``Gateway`` (group ``gateway.networking.k8s.io``): the waypoint of that name in the
  policy's namespace, for every request it serves;
- ``Service`` (core group): requests to that Service (in the policy's namespace) through
  this waypoint;
- ``GatewayClass``, from the root namespace (``ambit-system``) only: every waypoint of that
  class;
- ``ServiceEntry``: nothing (ambit has none).

The same rule holds for AuthorizationPolicy and RequestAuthentication.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mesh.authz_match import parse_ip
from mesh.constants import SYSTEM_NAMESPACE, WAYPOINT_CLASSES
from mesh.identity import SpiffeId
from mesh.model_policy import GATEWAY_GROUP, TargetRef


@dataclass(frozen=True)
class WaypointScope:
    """One waypoint: its Gateway's key (``namespace/name``) and class."""

    waypoint: str
    gateway_class: str = WAYPOINT_CLASSES[0]

    @cached_property
    def namespace(self) -> str:
        return self.waypoint.partition("/")[0]

    def binding(
        self, namespace: str, target_refs: tuple[TargetRef, ...], service: str | None
    ) -> str | None:
        """Which of ``target_refs`` (of a policy in ``namespace``) binds a request to
        ``service`` (``namespace/name``, None for traffic to a workload) at this waypoint,
        in words; None if none does."""
        for ref in target_refs:
            key = f"{namespace}/{ref.name}"
            if ref.group == GATEWAY_GROUP and ref.kind == "Gateway" and key == self.waypoint:
                return f"Gateway {key}"
            if ref.group == "" and ref.kind == "Service" and key == service:
                return f"Service {key}"
            if (
                ref.group == GATEWAY_GROUP
                and ref.kind == "GatewayClass"
                and namespace == SYSTEM_NAMESPACE
                and ref.name == self.gateway_class
            ):
                return f"GatewayClass {ref.name}"
        return None


@dataclass(frozen=True)
class RequestAuth:
    """A verified JWT: ``principal`` is ``<iss>/<sub>``, ``claims`` its payload."""

    principal: str
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def audiences(self) -> tuple[str, ...]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return (aud,)
        if isinstance(aud, list):
            return tuple(a for a in aud if isinstance(a, str))
        return ()

    @property
    def presenter(self) -> str | None:
        azp = self.claims.get("azp")
        return azp if isinstance(azp, str) else None

    def claim(self, path: tuple[str, ...]) -> tuple[str, ...]:
        """The string values of the claim at ``path`` (nested objects), a list's strings
        each; () when absent or not a string."""
        value: Any = self.claims
        for name in path:
            if not isinstance(value, Mapping) or name not in value:
                return ()
            value = value[name]
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()


@dataclass(frozen=True)
class L7Request:
    """One HTTP request at the waypoint, as policy sees it.

    ``src_identity`` is the peer's (the HBONE client's; None if plaintext), ``src_ip`` its
    address; ``remote_ip`` the original client's (``X-Forwarded-For``), "" for the same as
    ``src_ip``. ``dst_service`` is the Service key (``namespace/name``) the request was sent
    to, None for traffic addressed to a workload; ``dst_port`` the port it was sent to (the
    Service port). ``host`` is the authority as sent (port included, if given); ``path``
    may carry a query, which policy ignores. ``headers`` are (lower-case name, value).
    ``remote_ip`` must be an address (ValueError otherwise): the proxy that reads it from a
    header decides what a malformed one means."""

    scope: WaypointScope
    src_identity: SpiffeId | None
    src_ip: str
    dst_service: str | None
    dst_port: int
    method: str
    path: str
    host: str
    headers: tuple[tuple[str, str], ...] = ()
    auth: RequestAuth | None = None
    dst_ip: str = ""
    remote_ip: str = ""
    sni: str = ""

    def __post_init__(self) -> None:
        if self.remote_ip:
            parse_ip(self.remote_ip)

    @cached_property
    def _header_map(self) -> dict[str, str]:
        joined: dict[str, str] = {}
        for name, value in self.headers:
            name = name.lower()
            joined[name] = f"{joined[name]},{value}" if name in joined else value
        return joined

    def header(self, name: str) -> str | None:
        """The header's value (several joined with ``,``, as Envoy does), or None."""
        return self._header_map.get(name.lower())

    @cached_property
    def url_path(self) -> str:
        """The path without query or fragment: what ``paths`` match."""
        end = len(self.path)
        for mark in "?#":
            at = self.path.find(mark)
            if at != -1:
                end = min(end, at)
        return self.path[:end]
