"""Gateway API kinds as typed objects: GatewayClass and Gateway here, HTTPRoute and
GRPCRoute in :mod:`k8s.route_manifests` (``gateway.networking.k8s.io/v1``; ``v1beta1``
too for GatewayClass, Gateway and HTTPRoute, as clusters still serve it), and the
Gateway API's value types both read (hostnames, groups, kinds, durations, paths).

A document is checked as the API server checks it against the Gateway API CRDs, their
schema and CEL rules, with the loosest limits any current channel (standard or
experimental) accepts, so what a cluster stored is never refused here; the defaults the
API server fills in are filled in here. Specs are read strictly, like the policy kinds:
an unknown field is an error (a typo'd ``backendRef:`` would otherwise silently change
where requests go). The standard fields ambit does not use are accepted and dropped
(:data:`IGNORED`). Listeners, routes' parts and JWT rules are built straight as
:mod:`mesh.model_l7` values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from k8s.manifest_reader import Meta, Pairs, Reader, read_meta
from mesh.constants import WAYPOINT_CLASSES, WAYPOINT_CONTROLLER
from mesh.model import GATEWAY_GROUP
from mesh.model_l7 import GatewayAddress, Listener, RouteGroupKind

GATEWAY_API_VERSIONS: Final = (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1")
GRPC_ROUTE_API_VERSIONS: Final = (f"{GATEWAY_GROUP}/v1",)

# Valid fields ambit does not use, by where they appear: accepted (if a mapping or list)
# and dropped.
IGNORED: Final = {
    "GatewayClass.spec": ("parametersRef",),
    "Gateway.spec": ("allowedListeners", "tls", "defaultScope"),
    "Gateway.spec.infrastructure": ("parametersRef",),
    "listener.tls": ("certificateRefs", "options", "frontendValidation"),
    "rule": ("sessionPersistence",),
}

_MAX_LISTENERS = 64
_MAX_ADDRESSES = 16
_MAX_INFRASTRUCTURE = {"labels": 8, "annotations": 16}  # entries, in spec.infrastructure

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_HOSTNAME_RE = re.compile(rf"^(\*\.)?{_DOMAIN}$")
_PRECISE_HOSTNAME_RE = re.compile(rf"^{_DOMAIN}$")
_GROUP_RE = re.compile(rf"^{_DOMAIN}$")
_KIND_RE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_DOMAIN_PATH = rf"{_DOMAIN}/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+"
_CONTROLLER_RE = re.compile(rf"^{_DOMAIN_PATH}$")
_PROTOCOL_RE = re.compile(rf"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|^{_DOMAIN}/[A-Za-z0-9]+$")
_ADDRESS_TYPE_RE = re.compile(rf"^(Hostname|IPAddress|NamedAddress|{_DOMAIN_PATH})$")
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_PATH_CHARS_RE = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")
_DURATION_RE = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART_RE = re.compile(r"([0-9]+)(ms|h|m|s)")
_DURATION_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


@dataclass(frozen=True, kw_only=True)
class GatewayClass(Meta):
    """Cluster-scoped: which controller runs the Gateways of this class."""

    namespace: str = ""
    controller_name: str
    description: str = ""


def foreign_waypoint_classes(classes: Iterable[GatewayClass]) -> frozenset[str]:
    """The waypoint class names another controller runs: a GatewayClass of that name whose
    ``controllerName`` is not ambit's (Istio installed beside ambit runs
    ``istio-waypoint``). ambit neither deploys nor reports on Gateways of those; without
    such a GatewayClass, ``istio-waypoint`` Gateways are ambit's, so Istio's manifests work
    unchanged."""
    return frozenset(
        c.name
        for c in classes
        if c.name in WAYPOINT_CLASSES and c.controller_name != WAYPOINT_CONTROLLER
    )


@dataclass(frozen=True, kw_only=True)
class Gateway(Meta):
    """A Gateway; those of a waypoint class are waypoints (:mod:`k8s.translate_l7`)."""

    gateway_class: str
    listeners: tuple[Listener, ...]
    addresses: tuple[GatewayAddress, ...] = ()
    # spec.infrastructure: what the objects made for this Gateway carry (the deployer's).
    infrastructure_labels: Pairs = ()
    infrastructure_annotations: Pairs = ()


# --- Gateway API values --------------------------------------------------------------------


def matching(
    r: Reader,
    value: object,
    path: str,
    pattern: re.Pattern[str],
    what: str,
    *,
    limit: int = 253,
    default: str | None = None,
) -> str:
    """A string of at most ``limit`` characters that ``pattern`` matches (``what`` it is)."""
    text = r.string(value, path, default, limit=limit)
    if not pattern.match(text):
        r.fail(path, f"{text!r} is not {what}")
    return text


def hostname(r: Reader, value: object, path: str, *, wildcard: bool = True) -> str:
    """An RFC 1123 hostname in lowercase, not an IP address; ``*.`` may start it if
    ``wildcard``."""
    text = r.string(value, path, limit=253)
    try:
        ipaddress.ip_address(text)
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip or not (_HOSTNAME_RE if wildcard else _PRECISE_HOSTNAME_RE).match(text):
        star = ", optionally after '*.'" if wildcard else ""
        r.fail(
            path,
            f"{text!r} is not a hostname: lowercase letters, digits, '-' and '.'{star};"
            " not an IP address",
        )
    return text


def group(r: Reader, value: object, path: str, default: str) -> str:
    text = r.string(value, path, default, limit=253)
    if text and not _GROUP_RE.match(text):
        r.fail(path, f"{text!r} is not an API group: '' (core) or a DNS subdomain")
    return text


def kind(r: Reader, value: object, path: str, default: str | None = None) -> str:
    what = "a kind: letters, digits and '-', starting with a letter"
    return matching(r, value, path, _KIND_RE, what, limit=63, default=default)


def object_name(r: Reader, value: object, path: str) -> str:
    """Gateway API's ObjectName: any name of 1-253 characters."""
    text = r.string(value, path, limit=253)
    if not text:
        r.fail(path, "must not be empty")
    return text


def optional_namespace(r: Reader, value: object, path: str) -> str:
    """A reference's namespace; "" when unset (the referring object's own)."""
    return r.label_name(value, path) if value not in (None, "") else ""


def header_name(r: Reader, value: object, path: str) -> str:
    what = "a header name (letters, digits and !#$%&'*+-.^_`|~)"
    return matching(r, value, path, _HEADER_NAME_RE, what, limit=256)


def duration_ms(r: Reader, value: object, path: str) -> int:
    """A Gateway API duration (GEP-2257: ``1h``, ``30s``, ``1m30s``, ``500ms``) in ms."""
    text = r.string(value, path)
    if not _DURATION_RE.match(text):
        r.fail(path, f"{text!r} is not a duration: up to 4 parts such as 1h, 10m, 30s, 500ms")
    return sum(int(n) * _DURATION_MS[unit] for n, unit in _DURATION_PART_RE.findall(text))


def url_path(r: Reader, value: str, path: str) -> None:
    """An Exact or PathPrefix match's path, or a path modifier's: absolute, normalised."""
    if not value.startswith("/"):
        r.fail(path, f"{value!r} must start with '/'")
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            r.fail(path, f"{value!r} must not contain {bad!r}")
    if value.endswith(("/..", "/.")):
        r.fail(path, f"{value!r} must not end with '/.' or '/..'")
    if not _PATH_CHARS_RE.match(value):
        r.fail(path, f"{value!r} has characters a URL path cannot have (percent-encode them)")


def unique(r: Reader, values: list[str], path: str, what: str) -> None:
    for i, value in enumerate(values):
        if value in values[:i]:
            r.fail(f"{path}[{i}]", f"{what} {value!r} appears twice")


# --- GatewayClass and Gateway ------------------------------------------------------------


def read_gateway_class(r: Reader, doc: Mapping[str, object]) -> GatewayClass:
    meta = read_meta(r, doc, namespaced=False)
    known = ("controllerName", "description", *IGNORED["GatewayClass.spec"])
    spec = r.mapping(doc.get("spec"), "spec", known)
    what = "a controller name: a domain, '/', then a path (example.com/gateway)"
    controller = matching(
        r, spec.get("controllerName"), "spec.controllerName", _CONTROLLER_RE, what
    )
    description = r.string(spec.get("description"), "spec.description", "", limit=64)
    return GatewayClass(**meta, controller_name=controller, description=description)


def _allowed_routes(r: Reader, value: object, path: str) -> dict[str, object]:
    allowed = r.mapping(value, path, ("namespaces", "kinds"))
    at = f"{path}.namespaces"
    namespaces = r.mapping(allowed.get("namespaces"), at, ("from", "selector"))
    origin = r.string(namespaces.get("from"), f"{at}.from", "Same")
    if origin not in ("All", "Same", "Selector"):
        r.fail(f"{at}.from", f"{origin!r}: must be All, Same or Selector")
    selector: Pairs | None = None
    if namespaces.get("selector") is not None:
        raw = r.mapping(
            namespaces["selector"], f"{at}.selector", ("matchLabels", "matchExpressions")
        )
        if "matchExpressions" in raw:
            r.fail(f"{at}.selector.matchExpressions", "not supported yet: use matchLabels")
        selector = r.labels(raw.get("matchLabels"), f"{at}.selector.matchLabels")
    kinds = []
    for item, item_at in r.items(allowed.get("kinds"), f"{path}.kinds", 8):
        k = r.mapping(item, item_at, ("group", "kind"))
        route_group = group(r, k.get("group"), f"{item_at}.group", GATEWAY_GROUP)
        kinds.append(RouteGroupKind(route_group, kind(r, k.get("kind"), f"{item_at}.kind")))
    return {"allowed_from": origin, "namespace_selector": selector, "allowed_kinds": tuple(kinds)}


def _listener(r: Reader, value: object, path: str) -> Listener:
    item = r.mapping(value, path, ("name", "hostname", "port", "protocol", "tls", "allowedRoutes"))
    what = "a protocol: HTTP, HTTPS, TLS, TCP, UDP, HBONE or a domain-prefixed name"
    protocol = matching(r, item.get("protocol"), f"{path}.protocol", _PROTOCOL_RE, what, limit=255)
    host = item.get("hostname")
    if host not in (None, "") and protocol in ("TCP", "UDP"):
        r.fail(f"{path}.hostname", f"must not be set for protocol {protocol}")
    tls_mode = ""
    if item.get("tls") is not None:
        if protocol in ("HTTP", "TCP", "UDP"):
            r.fail(f"{path}.tls", f"must not be set for protocol {protocol}")
        tls = r.mapping(item["tls"], f"{path}.tls", ("mode", *IGNORED["listener.tls"]))
        tls_mode = r.string(tls.get("mode"), f"{path}.tls.mode", "Terminate")
        if tls_mode not in ("Terminate", "Passthrough"):
            r.fail(f"{path}.tls.mode", f"{tls_mode!r}: must be Terminate or Passthrough")
        if protocol == "HTTPS" and tls_mode != "Terminate":
            r.fail(f"{path}.tls.mode", "must be Terminate for protocol HTTPS")
        if tls_mode == "Terminate" and not (tls.get("certificateRefs") or tls.get("options")):
            r.fail(f"{path}.tls", "mode Terminate needs certificateRefs (or options)")
    return Listener(
        name=r.name(item.get("name"), f"{path}.name"),
        port=r.port(item.get("port"), f"{path}.port"),
        protocol=protocol,
        hostname=hostname(r, host, f"{path}.hostname") if host not in (None, "") else "",
        tls_mode=tls_mode,
        **_allowed_routes(r, item.get("allowedRoutes"), f"{path}.allowedRoutes"),  # type: ignore[arg-type]
    )


def _address(r: Reader, value: object, path: str) -> GatewayAddress:
    item = r.mapping(value, path, ("type", "value"))
    what = "an address type: IPAddress, Hostname or a domain-prefixed name"
    kind_ = matching(
        r, item.get("type"), f"{path}.type", _ADDRESS_TYPE_RE, what, default="IPAddress"
    )
    text = r.string(item.get("value"), f"{path}.value", limit=253)
    if kind_ == "IPAddress":
        r.ip(text, f"{path}.value")
    elif kind_ == "Hostname":
        hostname(r, text, f"{path}.value", wildcard=False)
    elif not text:
        r.fail(f"{path}.value", "must not be empty")
    return GatewayAddress(kind_, text)


def _infrastructure(r: Reader, value: object) -> tuple[Pairs, Pairs]:
    """``spec.infrastructure``: labels and annotations for what a deployer makes."""
    path = "spec.infrastructure"
    known = ("labels", "annotations", *IGNORED["Gateway.spec.infrastructure"])
    infrastructure = r.mapping(value, path, known)
    out = []
    for key, read in (("labels", r.labels), ("annotations", r.annotations)):
        pairs = read(infrastructure.get(key), f"{path}.{key}")
        if len(pairs) > _MAX_INFRASTRUCTURE[key]:
            r.fail(f"{path}.{key}", f"at most {_MAX_INFRASTRUCTURE[key]} entries")
        for k, v in pairs:
            if len(v) > 4096:
                r.fail(f"{path}.{key}.{k}", "a value has at most 4096 characters")
        out.append(pairs)
    return out[0], out[1]


def read_gateway(r: Reader, doc: Mapping[str, object]) -> Gateway:
    meta = read_meta(r, doc)
    known = ("gatewayClassName", "listeners", "addresses", "infrastructure",
             *IGNORED["Gateway.spec"])  # fmt: skip
    spec = r.mapping(doc.get("spec"), "spec", known)
    items = r.items(spec.get("listeners"), "spec.listeners", _MAX_LISTENERS)
    if not items:
        r.fail("spec.listeners", "a Gateway needs at least one listener")
    listeners: list[Listener] = []
    for item, at in items:
        new = _listener(r, item, at)
        for j, old in enumerate(listeners):
            if old.name == new.name:
                r.fail(f"{at}.name", f"{new.name!r} is also the name of spec.listeners[{j}]")
            if (old.port, old.protocol, old.hostname) == (new.port, new.protocol, new.hostname):
                r.fail(at, f"the same port, protocol and hostname as spec.listeners[{j}]")
        listeners.append(new)
    addresses: list[GatewayAddress] = []
    for item, at in r.items(spec.get("addresses"), "spec.addresses", _MAX_ADDRESSES):
        address = _address(r, item, at)
        if address.type in ("IPAddress", "Hostname") and address in addresses:
            r.fail(f"{at}.value", f"{address.type} {address.value!r} appears twice")
        addresses.append(address)
    gateway_class = object_name(r, spec.get("gatewayClassName"), "spec.gatewayClassName")
    labels, annotations = _infrastructure(r, spec.get("infrastructure"))
    return Gateway(
        **meta, gateway_class=gateway_class, listeners=tuple(listeners),
        addresses=tuple(addresses), infrastructure_labels=labels,
        infrastructure_annotations=annotations,
    )  # fmt: skip
