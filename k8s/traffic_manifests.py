"""The traffic-policy kinds as typed objects: Istio's DestinationRule
(``networking.istio.io/v1``, ``v1beta1``, ``v1alpha3``), Gateway API's
BackendTrafficPolicy (GEP-3388: ``gateway.networking.x-k8s.io/v1alpha1``, whose CRD's kind
is ``XBackendTrafficPolicy``), and ambit's FaultInjection and LocalRateLimit
(``networking.ambit.io/v1alpha1``), the objects a route's ``ExtensionRef`` filter names.

A DestinationRule is read as Istio users write it: every field Istio has is accepted,
and those ambit does not apply are kept by path (``unapplied``) for its status, never
silently dropped; a field Istio does not have is an error, as is a malformed value of
one ambit applies (a negative count, a bad duration, an unknown enum). Istio's
defaults fill what is left out. ``ambit.io/load-balancer`` (Istio's CRD refuses
``PEAK_EWMA`` in ``simple``) wins over ``simple``.

A BackendTrafficPolicy's ``sessionPersistence`` is accepted and kept as ``unapplied``.
The rest of the four kinds is read strictly, into :mod:`mesh.model_traffic` values with
their defaults filled in; what a host or a targetRef resolves to is translation's
(:mod:`k8s.translate_traffic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from k8s import gateway_manifests as g
from k8s.manifest_reader import Meta, Reader, read_meta
from k8s.policy_manifests import PolicyTargetRef
from k8s.policy_manifests import _timeout_ms as istio_duration_ms
from mesh.model_traffic import (
    LOAD_BALANCERS,
    ConnectionPool,
    LoadBalancer,
    OutlierDetection,
    RetryBudget,
)

DESTINATION_RULE_API_VERSIONS: Final = (
    "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3",
)  # fmt: skip
BACKEND_TRAFFIC_POLICY_API_VERSIONS: Final = ("gateway.networking.x-k8s.io/v1alpha1",)
FILTER_API_VERSIONS: Final = ("networking.ambit.io/v1alpha1",)
ANNOTATION_LOAD_BALANCER: Final = "ambit.io/load-balancer"
# Istio's LEAST_CONN is its older name of LEAST_REQUEST; these two it has are not applied.
_BALANCER_ALIASES: Final = {"LEAST_CONN": "LEAST_REQUEST"}
_UNAPPLIED_BALANCERS: Final = ("PASSTHROUGH", "UNSPECIFIED")
_MAX_COUNT: Final = 2**31 - 1  # Istio's int32 fields
_MAX_TARGET_REFS: Final = 16
_MAX_RATE: Final = 1_000_000_000
GRPC_CODES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
# The HTTP status an abort given only as a gRPC code answers an HTTP/1.1 caller with (the
# usual gRPC-to-HTTP mapping, as grpc-gateway's).
_GRPC_HTTP: Final = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503,
                     500, 401)  # fmt: skip

# Istio's DestinationRule fields (istio.io/api networking/v1 destination_rule.proto), each
# level's: those ambit applies are read; the others are kept as unapplied paths.
_DR_SPEC: Final = ("host", "trafficPolicy", "subsets", "exportTo", "workloadSelector")
_TRAFFIC_POLICY: Final = ("loadBalancer", "connectionPool", "outlierDetection", "tls",
                          "portLevelSettings", "tunnel", "proxyProtocol",
                          "retryBudget")  # fmt: skip
_LOAD_BALANCER: Final = ("simple", "consistentHash", "localityLbSetting", "warmupDurationSecs",
                         "warmup")  # fmt: skip
_POOL: Final = ("tcp", "http")
_TCP: Final = ("maxConnections", "connectTimeout", "tcpKeepalive", "maxConnectionDuration",
               "idleTimeout")  # fmt: skip
_HTTP: Final = ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection",
                "maxRetries", "idleTimeout", "h2UpgradePolicy", "useClientProtocol",
                "maxConcurrentStreams")  # fmt: skip
_OUTLIER: Final = ("consecutive5xxErrors", "consecutiveGatewayErrors", "interval",
                   "baseEjectionTime", "maxEjectionPercent", "splitExternalLocalOriginErrors",
                   "consecutiveLocalOriginFailures", "minHealthPercent",
                   "consecutiveErrors")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DestinationRule(Meta):
    """``host`` as written (resolved to a Service by translation); ``ignored_balancer``:
    a ``simple`` ambit does not apply (``PASSTHROUGH``, ``UNSPECIFIED``: the default is
    used); ``unapplied``: the paths of the fields set that ambit does not apply."""

    host: str
    load_balancer: LoadBalancer = "LEAST_REQUEST"
    pool: ConnectionPool | None = None
    outlier: OutlierDetection | None = None
    ignored_balancer: str = ""
    unapplied: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BackendTrafficPolicy(Meta):
    target_refs: tuple[PolicyTargetRef, ...]
    budget: RetryBudget = field(default_factory=RetryBudget)
    unapplied: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FaultInjection(Meta):
    """As :class:`mesh.model_traffic.FaultInjection` (no delay, no abort: 0 and 0%)."""

    delay_ms: int = 0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_grpc_status: int | None = None
    abort_percent: float = 0.0


@dataclass(frozen=True, kw_only=True)
class LocalRateLimit(Meta):
    requests: int
    unit: str = "Second"
    burst: int = 0  # 0: requests
    per_client: bool = False


# --- DestinationRule ---------------------------------------------------------------------


def _count(r: Reader, value: object, path: str) -> int:
    return r.integer(value, path, 0, _MAX_COUNT)


def _unapplied(fields: Mapping[str, object], applied: tuple[str, ...], path: str) -> list[str]:
    return [f"{path}.{key}" for key in fields if key not in applied]


def _balancer(r: Reader, value: object, path: str) -> tuple[LoadBalancer | None, str]:
    """A balancer's name: one ambit applies, or ("", the name) for Istio's two it does not."""
    text = r.string(value, path)
    text = _BALANCER_ALIASES.get(text, text)
    if text in LOAD_BALANCERS:
        return text, ""  # type: ignore[return-value]
    if text in _UNAPPLIED_BALANCERS:
        return None, text
    known = (*LOAD_BALANCERS, *_BALANCER_ALIASES, *_UNAPPLIED_BALANCERS)
    r.fail(path, f"{text!r} is not one of {', '.join(known)}")


def _pool(r: Reader, value: object, path: str, unapplied: list[str]) -> ConnectionPool:
    pool = r.mapping(value, path, _POOL)
    tcp = r.mapping(pool.get("tcp"), f"{path}.tcp", _TCP)
    http = r.mapping(pool.get("http"), f"{path}.http", _HTTP)
    unapplied += _unapplied(tcp, ("maxConnections",), f"{path}.tcp")
    unapplied += _unapplied(http, _HTTP[:4], f"{path}.http")
    counts = {}
    for key, name, where in (
        ("maxConnections", "max_connections", tcp),
        ("http1MaxPendingRequests", "max_pending", http),
        ("http2MaxRequests", "max_requests", http),
        ("maxRequestsPerConnection", "max_requests_per_connection", http),
        ("maxRetries", "max_retries", http),
    ):
        if key in where:
            at = f"{path}.{'tcp' if where is tcp else 'http'}.{key}"
            counts[name] = _count(r, where[key], at)
    return ConnectionPool(**counts)


def _outlier(r: Reader, value: object, path: str, unapplied: list[str]) -> OutlierDetection:
    o = r.mapping(value, path, _OUTLIER)
    unapplied += _unapplied(o, _OUTLIER[:5], path)
    values: dict[str, int] = {}
    for key, name in (("consecutive5xxErrors", "consecutive_5xx"),
                      ("consecutiveGatewayErrors", "consecutive_gateway")):  # fmt: skip
        if key in o:
            values[name] = _count(r, o[key], f"{path}.{key}")
    for key, name in (("interval", "interval_ms"), ("baseEjectionTime", "base_ejection_ms")):
        if key in o:
            values[name] = istio_duration_ms(r, o[key], f"{path}.{key}")
    if "maxEjectionPercent" in o:
        at = f"{path}.maxEjectionPercent"
        values["max_ejection_percent"] = r.integer(o["maxEjectionPercent"], at, 0, 100)
    return OutlierDetection(**values)


def read_destination_rule(r: Reader, doc: Mapping[str, object]) -> DestinationRule:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec", _DR_SPEC)
    host = r.string(spec.get("host"), "spec.host", limit=253)
    if not host:
        r.fail("spec.host", "must not be empty")
    unapplied = _unapplied(spec, ("host", "trafficPolicy"), "spec")
    at = "spec.trafficPolicy"
    policy = r.mapping(spec.get("trafficPolicy"), at, _TRAFFIC_POLICY)
    # tls: ISTIO_MUTUAL alone is what the mesh does anyway (HBONE's mutual TLS): applied.
    mesh_tls = policy.get("tls") == {"mode": "ISTIO_MUTUAL"}
    unapplied += _unapplied(policy, (*_TRAFFIC_POLICY[:3], *(("tls",) if mesh_tls else ())), at)
    lb = r.mapping(policy.get("loadBalancer"), f"{at}.loadBalancer", _LOAD_BALANCER)
    unapplied += _unapplied(lb, ("simple",), f"{at}.loadBalancer")
    balancer: LoadBalancer | None = "LEAST_REQUEST"
    ignored = ""
    if "simple" in lb:
        balancer, ignored = _balancer(r, lb["simple"], f"{at}.loadBalancer.simple")
    annotation = dict(meta["annotations"]).get(ANNOTATION_LOAD_BALANCER)
    if annotation is not None:
        path = f"metadata.annotations.{ANNOTATION_LOAD_BALANCER}"
        balancer, ignored = _balancer(r, annotation, path)
        if balancer is None:
            r.fail(path, f"{annotation!r} is not one of {', '.join(LOAD_BALANCERS)}")
    pool = outlier = None
    if policy.get("connectionPool") is not None:
        pool = _pool(r, policy["connectionPool"], f"{at}.connectionPool", unapplied)
    if policy.get("outlierDetection") is not None:
        outlier = _outlier(r, policy["outlierDetection"], f"{at}.outlierDetection", unapplied)
    return DestinationRule(
        **meta,
        host=host,
        load_balancer=balancer or "LEAST_REQUEST",
        pool=pool,
        outlier=outlier,
        ignored_balancer=ignored,
        unapplied=tuple(sorted(unapplied)),
    )


# --- BackendTrafficPolicy ----------------------------------------------------------------


def _target_refs(r: Reader, spec: Mapping[str, object]) -> tuple[PolicyTargetRef, ...]:
    items = r.items(spec.get("targetRefs"), "spec.targetRefs", _MAX_TARGET_REFS)
    if not items:
        r.fail("spec.targetRefs", "required: the Services the policy applies to")
    out = []
    for item, at in items:
        ref = r.mapping(item, at, ("group", "kind", "name"))
        out.append(
            PolicyTargetRef(
                group=g.group(r, ref.get("group"), f"{at}.group", ""),
                kind=g.kind(r, ref.get("kind"), f"{at}.kind"),
                name=g.object_name(r, ref.get("name"), f"{at}.name"),
            )
        )
    seen = [(t.group, t.kind, t.name) for t in out]
    for i, key in enumerate(seen):
        if key in seen[:i]:
            r.fail(f"spec.targetRefs[{i}]", "names the same object as an entry before it")
    return tuple(out)


def _interval_ms(r: Reader, value: object, path: str, low_ms: int) -> int:
    ms = g.duration_ms(r, value, path)
    if not low_ms <= ms <= 3_600_000:
        low = "1s" if low_ms == 1000 else "1ms"
        r.fail(path, f"{value!r} is not between {low} and 1h")
    return ms


def _budget(r: Reader, value: object, path: str) -> RetryBudget:
    c = r.mapping(value, path, ("budget", "minRetryRate"))
    budget = r.mapping(c.get("budget"), f"{path}.budget", ("percent", "interval"))
    rate = r.mapping(c.get("minRetryRate"), f"{path}.minRetryRate", ("count", "interval"))
    out = {}
    if "percent" in budget:
        out["percent"] = r.integer(budget["percent"], f"{path}.budget.percent", 0, 100)
    if "interval" in budget:
        out["interval_ms"] = _interval_ms(r, budget["interval"], f"{path}.budget.interval", 1000)
    if "count" in rate:
        out["min_retries"] = r.integer(rate["count"], f"{path}.minRetryRate.count", 1, 1_000_000)
    if "interval" in rate:
        at = f"{path}.minRetryRate.interval"
        out["min_interval_ms"] = _interval_ms(r, rate["interval"], at, 1)
    return RetryBudget(**out)


def read_backend_traffic_policy(r: Reader, doc: Mapping[str, object]) -> BackendTrafficPolicy:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec", ("targetRefs", "retryConstraint",
                                                 "sessionPersistence"))  # fmt: skip
    r.mapping(spec.get("sessionPersistence"), "spec.sessionPersistence")
    return BackendTrafficPolicy(
        **meta,
        target_refs=_target_refs(r, spec),
        budget=_budget(r, spec.get("retryConstraint"), "spec.retryConstraint"),
        unapplied=("spec.sessionPersistence",) if "sessionPersistence" in spec else (),
    )


# --- FaultInjection and LocalRateLimit ------------------------------------------------------


def _percentage(r: Reader, value: object, path: str) -> float:
    """Istio's ``percentage: {value: 0-100}``, 100 when left out."""
    if value is None:
        return 100.0
    p = r.mapping(value, path, ("value",))
    number = p.get("value", 0)
    if not isinstance(number, int | float) or isinstance(number, bool) or not 0 <= number <= 100:
        r.fail(f"{path}.value", f"must be a number 0-100, not {number!r}")
    return float(number)


def grpc_code(r: Reader, value: object, path: str) -> int:
    """A gRPC status: a code's name (``UNAVAILABLE``, any case) or its number 0-16."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, str) and value.upper() in GRPC_CODES:
        return GRPC_CODES.index(value.upper())
    if type(value) is int and 0 <= value < len(GRPC_CODES):
        return value
    r.fail(path, f"{value!r} is not a gRPC status: a code's name (UNAVAILABLE...) or 0-16")


def read_fault_injection(r: Reader, doc: Mapping[str, object]) -> FaultInjection:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec", ("delay", "abort"))
    if spec.get("delay") is None and spec.get("abort") is None:
        r.fail("spec", "set delay, abort or both")
    values: dict[str, object] = {}
    if spec.get("delay") is not None:
        delay = r.mapping(spec["delay"], "spec.delay", ("fixedDelay", "percentage"))
        if delay.get("fixedDelay") is None:
            r.fail("spec.delay.fixedDelay", "required")
        values["delay_ms"] = istio_duration_ms(r, delay["fixedDelay"], "spec.delay.fixedDelay")
        values["delay_percent"] = _percentage(r, delay.get("percentage"), "spec.delay.percentage")
    if spec.get("abort") is not None:
        known = ("httpStatus", "grpcStatus", "percentage")
        abort = r.mapping(spec["abort"], "spec.abort", known)
        if ("httpStatus" in abort) == ("grpcStatus" in abort):
            r.fail("spec.abort", "set httpStatus or grpcStatus (one of them)")
        if "httpStatus" in abort:
            values["abort_status"] = r.integer(abort["httpStatus"], "spec.abort.httpStatus",
                                               200, 599)  # fmt: skip
        else:
            code = grpc_code(r, abort["grpcStatus"], "spec.abort.grpcStatus")
            values["abort_grpc_status"] = code
            values["abort_status"] = _GRPC_HTTP[code]
        values["abort_percent"] = _percentage(r, abort.get("percentage"), "spec.abort.percentage")
    return FaultInjection(**meta, **values)  # type: ignore[arg-type]


def read_local_rate_limit(r: Reader, doc: Mapping[str, object]) -> LocalRateLimit:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec", ("requests", "unit", "burst", "perClient"))
    requests = r.integer(spec.get("requests"), "spec.requests", 1, _MAX_RATE)
    unit = r.string(spec.get("unit"), "spec.unit", "Second")
    if unit not in ("Second", "Minute", "Hour"):
        r.fail("spec.unit", f"{unit!r}: must be Second, Minute or Hour")
    burst = r.integer(spec["burst"], "spec.burst", 1, _MAX_RATE) if "burst" in spec else 0
    per_client = spec.get("perClient", False)
    if type(per_client) is not bool:
        r.fail("spec.perClient", f"must be true or false, not {per_client!r}")
    return LocalRateLimit(**meta, requests=requests, unit=unit, burst=burst, per_client=per_client)
