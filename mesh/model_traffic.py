"""The traffic-policy half of the mesh model: how a waypoint treats a backend Service
(Istio's ``DestinationRule``, Gateway API's ``BackendTrafficPolicy``) and what ambit's own
route filters do (``FaultInjection``, ``LocalRateLimit``, reached from a route rule's
``ExtensionRef`` filter).

Owns the values as plain frozen :class:`~mesh.jsonform.JsonForm` dataclasses, each with
its defaults filled in (Istio's and GEP-3388's), times in milliseconds and shares in
percent. The Kubernetes readers (:mod:`k8s.traffic_manifests`) build them; the snapshot
holds the top-level ones (:class:`DestinationRule`, :class:`BackendTrafficPolicy`,
:class:`FaultInjection`, :class:`LocalRateLimit`) beside the routes; the waypoint acts
on them (:mod:`waypoint.backends`, :mod:`waypoint.faults`). Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Literal, TypeAlias

from mesh.jsonform import JsonForm
from mesh.model_checks import Keyed, check

LoadBalancer: TypeAlias = Literal["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", "PEAK_EWMA"]
LOAD_BALANCERS: Final = ("LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", "PEAK_EWMA")
RateUnit: TypeAlias = Literal["Second", "Minute", "Hour"]
UNIT_SECONDS: Final = {"Second": 1, "Minute": 60, "Hour": 3600}
EXTENSION_GROUP: Final = "networking.ambit.io"
EXTENSION_KINDS: Final = ("FaultInjection", "LocalRateLimit")


def _percent(value: float, what: str) -> None:
    check(0 <= value <= 100, f"{what}: {value!r} is not a percentage 0-100")


def _count(value: int, what: str) -> None:
    check(type(value) is int and value >= 0, f"{what}: {value!r} is not a count of 0 or more")


# --- DestinationRule ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionPool(JsonForm):
    """``trafficPolicy.connectionPool``; 0 is no limit (Istio's default, 2^32-1).
    ``max_pending``: requests waiting for an HTTP/1.1 connection
    (``http1MaxPendingRequests``); ``max_requests``: requests in flight to the backend
    (``http2MaxRequests``, every protocol, as in Envoy); ``max_retries``: retries in
    flight at once."""

    max_connections: int = 0
    max_pending: int = 0
    max_requests: int = 0
    max_requests_per_connection: int = 0
    max_retries: int = 0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pending", "max_requests",
                     "max_requests_per_connection", "max_retries"):  # fmt: skip
            _count(getattr(self, name), f"connection pool: {name}")


@dataclass(frozen=True)
class OutlierDetection(JsonForm):
    """``trafficPolicy.outlierDetection`` with Istio's defaults; a trigger of 0 is off."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval_ms: int = 10_000
    base_ejection_ms: int = 30_000
    max_ejection_percent: int = 10

    def __post_init__(self) -> None:
        _count(self.consecutive_5xx, "outlier detection: consecutive5xxErrors")
        _count(self.consecutive_gateway, "outlier detection: consecutiveGatewayErrors")
        check(self.interval_ms > 0, "outlier detection: interval must be longer than 0")
        _count(self.base_ejection_ms, "outlier detection: baseEjectionTime")
        _percent(self.max_ejection_percent, "outlier detection: maxEjectionPercent")


@dataclass(frozen=True)
class DestinationRule(Keyed, JsonForm):
    """An Istio ``DestinationRule`` as ambit honours it: for the Service ``service``
    (``namespace/name``, resolved from ``host``), the balancer, connection pool and
    outlier detection. ``created`` (RFC 3339) decides between two rules for one Service:
    the oldest counts, as in Istio."""

    kind: ClassVar[Literal["destination_rule"]] = "destination_rule"
    name: str
    namespace: str
    host: str
    service: str
    load_balancer: LoadBalancer = "LEAST_REQUEST"
    pool: ConnectionPool | None = None
    outlier: OutlierDetection | None = None
    created: str = ""

    def __post_init__(self) -> None:
        lb = self.load_balancer
        check(lb in LOAD_BALANCERS, f"destination rule {self.key}: load balancer {lb!r}"
               f" is not one of {', '.join(LOAD_BALANCERS)}")  # fmt: skip


# --- BackendTrafficPolicy (GEP-3388) ------------------------------------------------------------


@dataclass(frozen=True)
class RetryBudget(JsonForm):
    """``retryConstraint``: retries at most ``percent`` of the requests over
    ``interval_ms``, and at least ``min_retries`` per ``min_interval_ms`` allowed
    (GEP-3388's defaults: 20% over 10 s, 10 per second)."""

    percent: int = 20
    interval_ms: int = 10_000
    min_retries: int = 10
    min_interval_ms: int = 1_000

    def __post_init__(self) -> None:
        _percent(self.percent, "retry budget: percent")
        check(self.interval_ms > 0 and self.min_interval_ms > 0,
               "retry budget: intervals must be longer than 0")  # fmt: skip
        _count(self.min_retries, "retry budget: minRetryRate count")


@dataclass(frozen=True)
class BackendTrafficPolicy(Keyed, JsonForm):
    """A Gateway API ``BackendTrafficPolicy`` (``XBackendTrafficPolicy``): the retry
    budget of the Services ``services`` (keys, in the policy's namespace). ``created``
    decides between two for one Service: the oldest counts, as Gateway API asks."""

    kind: ClassVar[Literal["backend_traffic_policy"]] = "backend_traffic_policy"
    name: str
    namespace: str
    services: tuple[str, ...]
    budget: RetryBudget = RetryBudget()
    created: str = ""


# --- ambit's route filters --------------------------------------------------------------------


@dataclass(frozen=True)
class FaultInjection(Keyed, JsonForm):
    """``networking.ambit.io/v1alpha1`` ``FaultInjection``, as Istio's VirtualService
    ``fault``: ``delay_percent`` of the requests wait ``delay_ms`` first (flag ``DI``);
    ``abort_percent`` are answered at once with ``abort_status`` (HTTP) or, to a gRPC
    caller, ``abort_grpc_status`` when given (flag ``FI``). Both may apply to one request."""

    kind: ClassVar[Literal["fault_injection"]] = "fault_injection"
    name: str
    namespace: str
    delay_ms: int = 0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_grpc_status: int | None = None
    abort_percent: float = 0.0

    def __post_init__(self) -> None:
        _count(self.delay_ms, f"fault {self.key}: delay")
        _percent(self.delay_percent, f"fault {self.key}: delay percentage")
        _percent(self.abort_percent, f"fault {self.key}: abort percentage")
        check(self.abort_status == 0 or 200 <= self.abort_status <= 599,
               f"fault {self.key}: abort status {self.abort_status} is not 200-599")  # fmt: skip
        grpc = self.abort_grpc_status
        check(grpc is None or 0 <= grpc <= 16,
               f"fault {self.key}: gRPC status {grpc} is not 0-16")  # fmt: skip


@dataclass(frozen=True)
class LocalRateLimit(Keyed, JsonForm):
    """``networking.ambit.io/v1alpha1`` ``LocalRateLimit``: a token bucket of ``burst``
    tokens refilled at ``requests`` per ``unit``, one per route rule that names it (and
    per caller identity too when ``per_client``); a request finding it empty gets
    ``429`` with flag ``RL``. Each waypoint replica keeps its own buckets (local)."""

    kind: ClassVar[Literal["local_rate_limit"]] = "local_rate_limit"
    name: str
    namespace: str
    requests: int
    unit: RateUnit = "Second"
    burst: int = 0  # 0: ``requests``
    per_client: bool = False

    def __post_init__(self) -> None:
        check(type(self.requests) is int and self.requests >= 1,
               f"rate limit {self.key}: requests must be 1 or more")  # fmt: skip
        check(self.unit in UNIT_SECONDS, f"rate limit {self.key}: unit {self.unit!r}"
               " is not Second, Minute or Hour")  # fmt: skip
        _count(self.burst, f"rate limit {self.key}: burst")

    @property
    def rate(self) -> float:
        """Tokens a second."""
        return self.requests / UNIT_SECONDS[self.unit]

    @property
    def bucket_size(self) -> int:
        return self.burst or self.requests


@dataclass(frozen=True)
class ExtensionRef(JsonForm):
    """A route filter's ``extensionRef``: an object of the route's namespace."""

    group: str
    kind: str
    name: str

    @property
    def known(self) -> bool:
        """Whether it names one of ambit's filter kinds."""
        return self.group == EXTENSION_GROUP and self.kind in EXTENSION_KINDS
