"""Istio's kinds that ambit does not implement: which groups they come in, and what to use
instead, in words a user reads beside the object (``ambit apply``, ``ambit up``, ``ambit
check``, the control plane's log). Pure: no I/O.

ambit reads Istio's ``security.istio.io`` AuthorizationPolicy, PeerAuthentication and
RequestAuthentication, and ``networking.istio.io`` DestinationRule; every other kind of
these groups (VirtualService, ServiceEntry, Sidecar, EnvoyFilter, Istio's Gateway,
Telemetry, WasmPlugin...) is ignored, never silently: each object is named with what to
use instead.
"""

from __future__ import annotations

from typing import Final

ISTIO_GROUP_SUFFIX: Final = "istio.io"
# The groups of Istio's kinds that describe traffic, the ones looked for (not, say,
# install.istio.io's IstioOperator). Listing them needs "list" on every resource of
# these groups: a ClusterRole rule {apiGroups: ISTIO_GROUPS, resources: ["*"]}.
ISTIO_GROUPS: Final = (
    "networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io",
)  # fmt: skip
IGNORED_HINT: Final = (
    "ambit ignores these: traffic they describe is not applied. Routing, retries and"
    " timeouts: a waypoint with Gateway API HTTPRoute or GRPCRoute (docs/waypoint.md);"
    " policy: AuthorizationPolicy, PeerAuthentication, RequestAuthentication; a Service's"
    " balancer, connection pool and outlier detection: DestinationRule"
)
SUBSETS_INSTEAD: Final = "subsets are a Service per version, split by HTTPRoute backendRefs weights"
INSTEAD: Final = {
    "VirtualService": "routing, retries, timeouts, faults and mirroring are a waypoint's"
    f" HTTPRoute or GRPCRoute (docs/waypoint.md); {SUBSETS_INSTEAD}",
    "Gateway": "a waypoint is a Gateway API Gateway (gateway.networking.k8s.io) of class"
    " ambit-waypoint (ambit waypoint apply)",
    "Sidecar": "ambient mode has no sidecars: nothing to configure",
    "ServiceEntry": "ambit has no registry of outside services: a Service without a"
    " selector and an EndpointSlice give them a name",
    "EnvoyFilter": "ambit's proxies are not Envoy: there is nothing to patch",
    "Telemetry": "Istio's metrics and an access log line per request are always on",
    "WasmPlugin": "ambit's waypoint runs no plugins",
    "ProxyConfig": "ambit's proxies take their settings from their flags",
}


def is_istio_group(group: str) -> bool:
    return group == ISTIO_GROUP_SUFFIX or group.endswith("." + ISTIO_GROUP_SUFFIX)


def ignored_kind(kind: object, api_version: object) -> str | None:
    """What to say of an object of ``kind`` and ``api_version`` that ambit does not
    implement but recognizes as Istio's (None for any other unknown kind): ignored, and
    what to use instead."""
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return None
    group = api_version.rpartition("/")[0]
    if group not in ISTIO_GROUPS:
        return None
    instead = INSTEAD.get(kind, "ambit does not implement it (docs/objects.md lists the kinds)")
    return f"Istio's {kind} is ignored, nothing it describes is applied: {instead}"
