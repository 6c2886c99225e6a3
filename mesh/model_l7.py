"""The L7 half of the mesh model: waypoints (Gateway API Gateways of a waypoint class),
HTTP and gRPC routes, and the JWT rules of a RequestAuthentication.

Owns the values a waypoint will act on, as plain frozen :class:`~mesh.jsonform.JsonForm`
dataclasses: a :class:`Gateway` with its :class:`Listener`\\ s; an :class:`HttpRoute` or
:class:`GrpcRoute` with its parents (Services or Gateways), hostnames and rules (matches,
filters with their settings, CORS's too, backends, timeouts); a :class:`JwtRule`. The
Kubernetes readers
(:mod:`k8s.gateway_manifests`, :mod:`k8s.policy_manifests`) build these parts directly, so
a route in the snapshot is the route as read, with its defaults filled in.
:mod:`mesh.model` puts the top-level ones in :class:`~mesh.model.MeshSnapshot`. Pure data,
no I/O; the waypoint's route table (:mod:`waypoint.routes`) acts on the routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from mesh.jsonform import JsonForm
from mesh.model_checks import Keyed, check, selector_matches
from mesh.model_traffic import ExtensionRef

Pairs: TypeAlias = tuple[tuple[str, str], ...]
MatchType: TypeAlias = Literal["Exact", "RegularExpression"]
PathType: TypeAlias = Literal["Exact", "PathPrefix", "RegularExpression"]
ForTraffic: TypeAlias = Literal["service", "workload", "all", "none"]

MAX_WEIGHT = 1_000_000
REFUSED_WAYPOINT = "#not-admitted"  # suffix of a waypoint key that names no waypoint


def refused_waypoint(key: str) -> str:
    """The binding of an object whose namespace waypoint ``key`` does not admit: a key no
    Service has (``#`` is in no Service name), so ztunnel refuses its traffic as it does a
    missing waypoint's, and the waypoint ``key`` does not serve it."""
    return key + REFUSED_WAYPOINT


def _port(value: int, what: str, *, zero_ok: bool = False) -> None:
    ok = type(value) is int and (0 if zero_ok else 1) <= value <= 65535
    check(ok, f"{what}: port {value!r} is not an integer 1-65535")


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> None:
    check(value in allowed, f"{what}: {value!r} is not one of {', '.join(allowed)}")


# --- Waypoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteGroupKind(JsonForm):
    group: str
    kind: str


@dataclass(frozen=True)
class Listener(JsonForm):
    """A port of a Gateway. ``allowed_from``: whose routes may attach (``Same`` namespace,
    ``All``, or ``Selector`` namespaces matching ``namespace_selector``); ``allowed_kinds``
    empty: the kinds the protocol takes. ``tls_mode`` "" when the listener has no TLS."""

    name: str
    port: int
    protocol: str  # HTTP, HTTPS, TLS, TCP, UDP, HBONE, or a domain-prefixed name
    hostname: str = ""
    tls_mode: str = ""
    allowed_from: Literal["All", "Same", "Selector"] = "Same"
    namespace_selector: Pairs | None = None
    allowed_kinds: tuple[RouteGroupKind, ...] = ()

    def __post_init__(self) -> None:
        _port(self.port, f"listener {self.name}")
        _one_of(self.allowed_from, ("All", "Same", "Selector"), f"listener {self.name}")

    def admits_namespace(self, namespace: str, labels: Pairs, own: str) -> bool:
        """Whether routes (or waypoint users) of ``namespace``, labelled ``labels``, may
        attach to this listener of a Gateway in namespace ``own``. ``Selector`` without a
        selector admits no namespace; an empty one admits every namespace."""
        if self.allowed_from == "All":
            return True
        if self.allowed_from == "Same":
            return namespace == own
        return self.namespace_selector is not None and selector_matches(
            self.namespace_selector, labels
        )

    def admits_kind(self, group: str, kind: str) -> bool:
        """Whether a route of ``group``/``kind`` may attach: the listed kinds, or, when none
        are listed, the HTTP route kinds on an HTTP, HTTPS or HBONE listener."""
        if self.allowed_kinds:
            return RouteGroupKind(group, kind) in self.allowed_kinds
        return kind in ("HTTPRoute", "GRPCRoute") and self.protocol in ("HTTP", "HTTPS", "HBONE")


@dataclass(frozen=True)
class GatewayAddress(JsonForm):
    type: str
    value: str


@dataclass(frozen=True)
class Gateway(Keyed, JsonForm):
    """A waypoint: a Gateway whose class is a waypoint class. ``for_traffic`` is what it
    takes (Istio's ``istio.io/waypoint-for``): traffic to Services, to workloads, both, or
    none. Its pods are the endpoints of the Service with the same key."""

    kind: ClassVar[Literal["gateway"]] = "gateway"
    name: str
    namespace: str
    gateway_class: str
    listeners: tuple[Listener, ...]
    addresses: tuple[GatewayAddress, ...] = ()
    for_traffic: ForTraffic = "service"

    def __post_init__(self) -> None:
        traffic = ("service", "workload", "all", "none")
        _one_of(self.for_traffic, traffic, f"gateway {self.key}: for_traffic")

    def takes(self, traffic: Literal["service", "workload"]) -> bool:
        """Whether traffic addressed to a Service (or to a workload) may go through it."""
        return self.for_traffic in (traffic, "all")

    def admits(self, namespace: str, labels: Pairs) -> bool:
        """Whether Services and workloads of ``namespace`` (labelled ``labels``) may use this
        waypoint: its own namespace always; another when the ``allowedRoutes`` of one of
        its HBONE listeners (of any listener, when none is HBONE) admit that namespace, as
        Istio asks of ``use-waypoint-namespace``."""
        if namespace == self.namespace:
            return True
        hbone = [lis for lis in self.listeners if lis.protocol == "HBONE"] or self.listeners
        return any(lis.admits_namespace(namespace, labels, self.namespace) for lis in hbone)


# --- Route parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentRef(JsonForm):
    """What a route attaches to: a Service (group "") or a Gateway. ``namespace`` "" is the
    route's own; ``section_name`` "" and ``port`` 0 mean the whole parent."""

    group: str
    kind: str
    name: str
    namespace: str = ""
    section_name: str = ""
    port: int = 0

    def __post_init__(self) -> None:
        _port(self.port, f"parent {self.kind} {self.name}", zero_ok=True)

    @property
    def parent(self) -> tuple[str, str, str, str]:
        """What it refers to, without the section: (group, kind, namespace, name)."""
        return (self.group, self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class BackendRef(JsonForm):
    """Where matching requests go: a Service (group "") by default. ``namespace`` "" is the
    route's own; ``port`` 0 only for kinds other than Service; ``filters`` apply only to
    requests sent to this backend."""

    name: str
    port: int = 0
    group: str = ""
    kind: str = "Service"
    namespace: str = ""
    weight: int = 1
    filters: tuple[Filter, ...] = ()

    def __post_init__(self) -> None:
        what = f"backend {self.kind} {self.name}"
        _port(self.port, what, zero_ok=True)
        ok = type(self.weight) is int and 0 <= self.weight <= MAX_WEIGHT
        check(ok, f"{what}: weight {self.weight!r} is not 0-{MAX_WEIGHT}")


@dataclass(frozen=True)
class HeaderMatch(JsonForm):
    """A header (or query parameter) ``name`` whose value is, or matches, ``value``."""

    name: str
    value: str
    type: MatchType = "Exact"


@dataclass(frozen=True)
class HttpMatch(JsonForm):
    """Every part must match; ``method`` "" is any."""

    path_type: PathType = "PathPrefix"
    path: str = "/"
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[HeaderMatch, ...] = ()
    method: str = ""


@dataclass(frozen=True)
class HeaderModifier(JsonForm):
    set: Pairs = ()
    add: Pairs = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathModifier(JsonForm):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    value: str


@dataclass(frozen=True)
class Redirect(JsonForm):
    """An answer ``status_code`` with a Location built from the request and these: "",
    None or 0 keep the request's."""

    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int = 0
    status_code: int = 302

    def __post_init__(self) -> None:
        _port(self.port, "redirect", zero_ok=True)
        check(self.status_code in (301, 302, 303, 307, 308), "redirect: bad status code")


@dataclass(frozen=True)
class UrlRewrite(JsonForm):
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True)
class Mirror(JsonForm):
    """A copy of ``numerator``/``denominator`` of the requests goes to ``backend``."""

    backend: BackendRef
    numerator: int = 100
    denominator: int = 100

    def __post_init__(self) -> None:
        ok = 0 <= self.numerator <= self.denominator and self.denominator >= 1
        check(ok, f"mirror: fraction {self.numerator}/{self.denominator} is not 0-1")


@dataclass(frozen=True)
class Cors(JsonForm):
    """A CORS filter's settings (Gateway API's HTTPCORSFilter, GEP-1767). ``allow_origins``
    are ``scheme://host[:port]`` (the host may start with ``*``, greedy to the left) or
    ``*`` alone; ``allow_methods`` and ``allow_headers`` may be ``("*",)``; ``max_age``
    in seconds."""

    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int = 5

    def __post_init__(self) -> None:
        check(type(self.max_age) is int and self.max_age >= 1, "cors: max_age is below 1")


FILTER_TYPES = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
    "ExtensionRef",
    "CORS",
    "ExternalAuth",
)

UNSUPPORTED_FILTERS = ("ExternalAuth",)


@dataclass(frozen=True)
class Filter(JsonForm):
    """One filter of a rule or backend: its ``type`` and the settings of that type. An
    ``ExtensionRef`` keeps the object it names (ambit's ``FaultInjection`` and
    ``LocalRateLimit`` are applied; any other kind is not). ``ExternalAuth`` has no
    settings: a waypoint must refuse what it cannot apply. A ``CORS`` filter without
    settings allows no origin."""

    type: str
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: UrlRewrite | None = None
    mirror: Mirror | None = None
    cors: Cors | None = None
    extension: ExtensionRef | None = None

    def __post_init__(self) -> None:
        _one_of(self.type, FILTER_TYPES, "filter type")

    @property
    def supported(self) -> bool:
        """Whether ambit applies it: a type whose settings are kept, or an ``ExtensionRef``
        to one of ambit's filter kinds."""
        if self.type == "ExtensionRef":
            return self.extension is not None and self.extension.known
        return self.type not in UNSUPPORTED_FILTERS


def _check_retry(
    codes: tuple[int, ...], low: int, high: int, attempts: int, backoff_ms: int, what: str
) -> None:
    for code in codes:
        if not low <= code <= high:
            raise ValueError(f"{what} {code} is not {low}-{high}")
    if attempts < 0 or backoff_ms < 0:
        raise ValueError("retry attempts and backoff must not be negative")


@dataclass(frozen=True)
class Retry(JsonForm):
    """A rule's ``retry`` (Gateway API GEP-1731): a request whose answer has one of
    ``codes`` is sent again, at most ``attempts`` more times, ``backoff_ms`` apart at
    least (doubling, with jitter), within the route's timeout and the backend's retry
    budget. A connection that fails before any byte left is retried whatever this says."""

    codes: tuple[int, ...] = ()
    attempts: int = 2  # Istio's default number of retries
    backoff_ms: int = 25  # Envoy's base interval

    def __post_init__(self) -> None:
        _check_retry(self.codes, 400, 599, self.attempts, self.backoff_ms, "retry code")


@dataclass(frozen=True)
class GrpcRetry(JsonForm):
    """A GRPCRoute rule's ``retry``: GEP-1731's shape on gRPC status codes (0-16) instead of
    HTTP ones; a call whose answer is trailers-only with one of ``codes`` goes again."""

    codes: tuple[int, ...] = ()
    attempts: int = 2
    backoff_ms: int = 25

    def __post_init__(self) -> None:
        _check_retry(self.codes, 0, 16, self.attempts, self.backoff_ms, "gRPC retry code")


@dataclass(frozen=True)
class HttpRule(JsonForm):
    """Requests matching any of ``matches`` go through ``filters`` to one of ``backends``
    (by weight). Timeouts in milliseconds (0 disables), None when unset."""

    matches: tuple[HttpMatch, ...] = (HttpMatch(),)
    filters: tuple[Filter, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    timeout_ms: int | None = None
    backend_timeout_ms: int | None = None
    name: str = ""
    retry: Retry | None = None


@dataclass(frozen=True)
class GrpcMatch(JsonForm):
    """``service`` and ``method`` "" match any."""

    type: MatchType = "Exact"
    service: str = ""
    method: str = ""
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True)
class GrpcRule(JsonForm):
    """No ``matches``: every request."""

    matches: tuple[GrpcMatch, ...] = ()
    filters: tuple[Filter, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    name: str = ""
    retry: GrpcRetry | None = None


@dataclass(frozen=True)
class HttpRoute(Keyed, JsonForm):
    """An HTTPRoute as read. ``created`` (RFC 3339) orders routes of equal precedence, as
    Gateway API asks: the oldest first."""

    kind: ClassVar[Literal["http_route"]] = "http_route"
    name: str
    namespace: str
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...] = ()
    rules: tuple[HttpRule, ...] = (HttpRule(),)
    created: str = ""


@dataclass(frozen=True)
class GrpcRoute(Keyed, JsonForm):
    """A GRPCRoute as read; ``created`` as for :class:`HttpRoute`."""

    kind: ClassVar[Literal["grpc_route"]] = "grpc_route"
    name: str
    namespace: str
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...] = ()
    rules: tuple[GrpcRule, ...] = ()
    created: str = ""


# --- RequestAuthentication ---------------------------------------------------------------


@dataclass(frozen=True)
class JwtHeader(JsonForm):
    """A header carrying the token, after ``prefix`` (``Authorization`` / ``Bearer ``)."""

    name: str
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader(JsonForm):
    header: str
    claim: str


@dataclass(frozen=True)
class JwtRule(JsonForm):
    """How to find and check one issuer's tokens. No ``from_*``: the ``Authorization``
    header (``Bearer``) and the ``access_token`` parameter. ``jwks`` wins over
    ``jwks_uri`` when both are given, as in Istio."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    forward_original_token: bool = False
    timeout_ms: int | None = None  # fetching the JWKS

    def __post_init__(self) -> None:
        check(bool(self.issuer), "jwt rule: the issuer is empty")
