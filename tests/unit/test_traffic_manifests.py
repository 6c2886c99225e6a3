"""The traffic-policy kinds read from manifests (k8s.traffic_manifests): Istio's
DestinationRule as Istio users write it (every field accepted, the unapplied kept by
path), Gateway API's (X)BackendTrafficPolicy, ambit's FaultInjection and LocalRateLimit,
and a route's ExtensionRef filter; defaults filled in, malformed values refused naming the
field."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from k8s import manifests as m
from k8s.manifests import ManifestError, kind_info, parse_object
from k8s.policy_manifests import PolicyTargetRef
from mesh.model_l7 import Filter
from mesh.model_traffic import ConnectionPool, ExtensionRef, OutlierDetection, RetryBudget

DR = "networking.istio.io/v1"
BTP = "gateway.networking.x-k8s.io/v1alpha1"
AMBIT = "networking.ambit.io/v1alpha1"


def doc(api: str, kind: str, spec: object, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind,
            "metadata": {"name": "x", "namespace": "shop", **meta}, "spec": spec}  # fmt: skip


def read(api: str, kind: str, spec: object, **meta: Any) -> Any:
    return parse_object(doc(api, kind, spec, **meta))


def refused(api: str, kind: str, spec: object, **meta: Any) -> str:
    with pytest.raises(ManifestError) as caught:
        read(api, kind, spec, **meta)
    return str(caught.value)


# --- DestinationRule -------------------------------------------------------------------------


@pytest.mark.parametrize("api", [DR, "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"])
def test_a_bare_destination_rule_has_istios_defaults(api: str) -> None:
    rule = read(api, "DestinationRule", {"host": "reviews"})
    assert isinstance(rule, m.DestinationRule)
    assert (rule.host, rule.load_balancer, rule.pool, rule.outlier) == (
        "reviews", "LEAST_REQUEST", None, None,
    )  # fmt: skip
    assert (rule.unapplied, rule.ignored_balancer) == ((), "")


def test_every_honoured_field_is_read() -> None:
    rule = read(DR, "DestinationRule", {
        "host": "reviews.shop.svc.cluster.local",
        "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "connectionPool": {
                "tcp": {"maxConnections": 100},
                "http": {"http1MaxPendingRequests": 10, "http2MaxRequests": 1000,
                         "maxRequestsPerConnection": 5, "maxRetries": 3},
            },
            "outlierDetection": {"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 2,
                                 "interval": "1m", "baseEjectionTime": "500ms",
                                 "maxEjectionPercent": 50},
        },
    })  # fmt: skip
    assert rule.load_balancer == "ROUND_ROBIN"
    assert rule.pool == ConnectionPool(100, 10, 1000, 5, 3)
    assert rule.outlier == OutlierDetection(7, 2, 60_000, 500, 50)
    assert rule.unapplied == ()


def test_outlier_detection_without_values_has_istios() -> None:
    rule = read(DR, "DestinationRule", {"host": "r", "trafficPolicy": {"outlierDetection": {}}})
    assert rule.outlier == OutlierDetection(5, 0, 10_000, 30_000, 10)


@pytest.mark.parametrize(
    ("simple", "annotation", "expected", "ignored"),
    [
        ("LEAST_REQUEST", None, "LEAST_REQUEST", ""),
        ("LEAST_CONN", None, "LEAST_REQUEST", ""),  # Istio's older name
        ("RANDOM", None, "RANDOM", ""),
        ("PEAK_EWMA", None, "PEAK_EWMA", ""),
        ("PASSTHROUGH", None, "LEAST_REQUEST", "PASSTHROUGH"),
        ("UNSPECIFIED", None, "LEAST_REQUEST", "UNSPECIFIED"),
        ("ROUND_ROBIN", "PEAK_EWMA", "PEAK_EWMA", ""),  # the annotation wins
        ("PASSTHROUGH", "RANDOM", "RANDOM", ""),
        (None, "LEAST_CONN", "LEAST_REQUEST", ""),
    ],
)
def test_the_balancer(
    simple: str | None, annotation: str | None, expected: str, ignored: str
) -> None:
    policy = {"loadBalancer": {"simple": simple}} if simple else {}
    meta = {"annotations": {"ambit.io/load-balancer": annotation}} if annotation else {}
    rule = read(DR, "DestinationRule", {"host": "r", "trafficPolicy": policy}, **meta)
    assert (rule.load_balancer, rule.ignored_balancer) == (expected, ignored)


ISTIO_SAMPLE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  exportTo: ["."]
  workloadSelector: {matchLabels: {app: web}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    tunnel: {protocol: CONNECT, targetHost: x, targetPort: 80}
    proxyProtocol: {version: V1}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting: {enabled: true}
      warmupDurationSecs: 10s
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 30ms, tcpKeepalive: {time: 7200s}}
      http: {http2MaxRequests: 100, idleTimeout: 1h, h2UpgradePolicy: UPGRADE,
             useClientProtocol: true}
    outlierDetection:
      consecutive5xxErrors: 3
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
      minHealthPercent: 50
"""


def test_istios_other_fields_are_accepted_and_kept_by_path() -> None:
    (rule,) = m.loads(ISTIO_SAMPLE)
    assert isinstance(rule, m.DestinationRule)
    assert rule.unapplied == (
        "spec.exportTo",
        "spec.subsets",
        "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
        "spec.trafficPolicy.connectionPool.http.idleTimeout",
        "spec.trafficPolicy.connectionPool.http.useClientProtocol",
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
        "spec.trafficPolicy.loadBalancer.localityLbSetting",
        "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        "spec.trafficPolicy.outlierDetection.minHealthPercent",
        "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
        "spec.trafficPolicy.portLevelSettings",
        "spec.trafficPolicy.proxyProtocol",
        "spec.trafficPolicy.tunnel",
        "spec.workloadSelector",
    )
    assert rule.pool == ConnectionPool(max_connections=10, max_requests=100)
    assert rule.outlier == OutlierDetection(consecutive_5xx=3)


@pytest.mark.parametrize(
    ("spec", "annotations", "named"),
    [
        ({}, {}, "spec.host: required"),
        ({"host": ""}, {}, "spec.host: must not be empty"),
        ({"host": "r", "hosts": ["r"]}, {}, "spec.hosts: unknown field"),
        ({"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}, {},
         "spec.trafficPolicy.loadBalancer.simple: 'FASTEST' is not one of"),
        ({"host": "r", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": -1}}}}, {},
         "spec.trafficPolicy.connectionPool.tcp.maxConnections: must be an integer"),
        ({"host": "r", "trafficPolicy": {"connectionPool": {"http": {"maxRetries": "3"}}}}, {},
         "spec.trafficPolicy.connectionPool.http.maxRetries: must be an integer"),
        ({"host": "r", "trafficPolicy": {"outlierDetection": {"interval": "10 seconds"}}}, {},
         "spec.trafficPolicy.outlierDetection.interval: '10 seconds' is not a duration"),
        ({"host": "r", "trafficPolicy": {"outlierDetection": {"baseEjectionTime": "0s"}}}, {},
         "spec.trafficPolicy.outlierDetection.baseEjectionTime: '0s' is shorter than 1ms"),
        ({"host": "r", "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 101}}}, {},
         "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be an integer 0-100"),
        ({"host": "r", "trafficPolicy": {"connectionPool": {"tcp": {"maxConn": 1}}}}, {},
         "spec.trafficPolicy.connectionPool.tcp.maxConn: unknown field"),
        ({"host": "r"}, {"ambit.io/load-balancer": "PASSTHROUGH"},
         "metadata.annotations.ambit.io/load-balancer: 'PASSTHROUGH' is not one of LEAST_REQUEST,"),
    ],
)  # fmt: skip
def test_a_malformed_destination_rule_is_refused_naming_the_field(
    spec: dict[str, Any], annotations: dict[str, str], named: str
) -> None:
    meta = {"annotations": annotations} if annotations else {}
    assert named in refused(DR, "DestinationRule", spec, **meta)


# --- BackendTrafficPolicy ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["XBackendTrafficPolicy", "BackendTrafficPolicy"])
def test_a_backend_traffic_policy_has_gep_3388s_defaults(kind: str) -> None:
    spec = {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}]}
    policy = read(BTP, kind, spec)
    assert isinstance(policy, m.BackendTrafficPolicy)
    assert policy.target_refs == (PolicyTargetRef(group="", kind="Service", name="web"),)
    assert policy.budget == RetryBudget(20, 10_000, 10, 1_000)
    assert policy.unapplied == ()


def test_a_retry_constraint_is_read() -> None:
    policy = read(BTP, "XBackendTrafficPolicy", {
        "targetRefs": [{"group": "", "kind": "Service", "name": "web"},
                       {"group": "example.com", "kind": "Backend", "name": "b"}],
        "retryConstraint": {"budget": {"percent": 35, "interval": "1m"},
                            "minRetryRate": {"count": 3, "interval": "500ms"}},
        "sessionPersistence": {"sessionName": "s", "type": "Cookie"},
    })  # fmt: skip
    assert policy.budget == RetryBudget(35, 60_000, 3, 500)
    assert len(policy.target_refs) == 2
    assert policy.unapplied == ("spec.sessionPersistence",)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({}, "spec.targetRefs: required"),
        ({"targetRefs": [{"group": "", "kind": "Service"}]}, "spec.targetRefs[0].name: required"),
        ({"targetRefs": [{"kind": "Service", "name": "a"}, {"kind": "Service", "name": "a"}]},
         "spec.targetRefs[1]: names the same object"),
        ({"targetRefs": [{"kind": "Service", "name": "a"}],
          "retryConstraint": {"budget": {"percent": 120}}},
         "spec.retryConstraint.budget.percent: must be an integer 0-100"),
        ({"targetRefs": [{"kind": "Service", "name": "a"}],
          "retryConstraint": {"budget": {"interval": "500ms"}}},
         "spec.retryConstraint.budget.interval: '500ms' is not between 1s and 1h"),
        ({"targetRefs": [{"kind": "Service", "name": "a"}],
          "retryConstraint": {"minRetryRate": {"count": 0}}},
         "spec.retryConstraint.minRetryRate.count: must be an integer 1-1,000,000"),
        ({"targetRefs": [{"kind": "Service", "name": "a"}], "retry": {}},
         "spec.retry: unknown field"),
    ],
)  # fmt: skip
def test_a_malformed_backend_traffic_policy_is_refused(spec: dict[str, Any], named: str) -> None:
    assert named in refused(BTP, "XBackendTrafficPolicy", spec)


def test_the_kinds_names() -> None:
    for name in ("destinationrules", "dr", "backendtrafficpolicies", "xbackendtrafficpolicies",
                 "xbackendtrafficpolicy", "faultinjections", "localratelimits"):  # fmt: skip
        assert kind_info(name) is not None, name
    info = kind_info("backendtrafficpolicies")
    assert info is not None
    assert (info.kind, info.served_kind, info.resource) == (
        "BackendTrafficPolicy", "XBackendTrafficPolicy",
        "xbackendtrafficpolicies.gateway.networking.x-k8s.io",
    )  # fmt: skip


# --- FaultInjection and LocalRateLimit -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"delay": {"fixedDelay": "200ms", "percentage": {"value": 50}}},
         (200, 50.0, 0, None, 0.0)),
        ({"delay": {"fixedDelay": "1.5s"}}, (1500, 100.0, 0, None, 0.0)),
        ({"abort": {"httpStatus": 503, "percentage": {"value": 10}}}, (0, 0.0, 503, None, 10.0)),
        ({"abort": {"grpcStatus": "UNAVAILABLE"}}, (0, 0.0, 503, 14, 100.0)),
        ({"abort": {"grpcStatus": 8, "percentage": {"value": 0.5}}}, (0, 0.0, 429, 8, 0.5)),
        ({"abort": {"grpcStatus": "16"}}, (0, 0.0, 401, 16, 100.0)),
        ({"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 500}},
         (1000, 100.0, 500, None, 100.0)),
    ],
)  # fmt: skip
def test_a_fault_injection(spec: dict[str, Any], expected: tuple[Any, ...]) -> None:
    fault = read(AMBIT, "FaultInjection", spec)
    assert isinstance(fault, m.FaultInjection)
    got = (fault.delay_ms, fault.delay_percent, fault.abort_status, fault.abort_grpc_status,
           fault.abort_percent)  # fmt: skip
    assert got == expected


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({}, "spec: set delay, abort or both"),
        ({"abort": {"percentage": {"value": 5}}}, "spec.abort: set httpStatus or grpcStatus"),
        ({"abort": {"grpcStatus": "NOPE"}}, "spec.abort.grpcStatus: 'NOPE' is not a gRPC status"),
        ({"abort": {"grpcStatus": 17}}, "spec.abort.grpcStatus: 17 is not a gRPC status"),
        ({"abort": {"httpStatus": 600}}, "spec.abort.httpStatus: must be an integer 200-599"),
        ({"abort": {"httpStatus": 503, "percentage": {"value": -1}}},
         "spec.abort.percentage.value: must be a number 0-100"),
        ({"delay": {"fixedDelay": "later"}}, "spec.delay.fixedDelay: 'later' is not a duration"),
        ({"delay": {"exponentialDelay": "1s"}}, "spec.delay.exponentialDelay: unknown field"),
    ],
)  # fmt: skip
def test_a_malformed_fault_injection_is_refused(spec: dict[str, Any], named: str) -> None:
    assert named in refused(AMBIT, "FaultInjection", spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"requests": 100}, (100, "Second", 0, False)),
        ({"requests": 10, "unit": "Hour", "burst": 20, "perClient": True}, (10, "Hour", 20, True)),
    ],
)
def test_a_local_rate_limit(spec: dict[str, Any], expected: tuple[Any, ...]) -> None:
    limit = read(AMBIT, "LocalRateLimit", spec)
    assert (limit.requests, limit.unit, limit.burst, limit.per_client) == expected


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({}, "spec.requests: must be an integer"),
        ({"requests": -5}, "spec.requests: must be an integer 1-"),
        ({"requests": 5, "unit": "Day"}, "spec.unit: 'Day': must be Second, Minute or Hour"),
        ({"requests": 5, "burst": 0}, "spec.burst: must be an integer 1-"),
        ({"requests": 5, "perClient": "yes"}, "spec.perClient: must be true or false"),
    ],
)
def test_a_malformed_local_rate_limit_is_refused(spec: dict[str, Any], named: str) -> None:
    assert named in refused(AMBIT, "LocalRateLimit", spec)


# --- ExtensionRef filters ----------------------------------------------------------------------


def route(filter_yaml: str) -> m.HTTPRoute:
    text = textwrap.dedent(f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: web, namespace: shop}}
        spec:
          parentRefs: [{{group: "", kind: Service, name: web}}]
          rules:
          - filters:
            - {filter_yaml}
            backendRefs: [{{name: web, port: 80}}]
        """)
    (obj,) = m.loads(text)
    assert isinstance(obj, m.HTTPRoute)
    return obj


def test_an_extension_ref_filter_keeps_what_it_names() -> None:
    found = route("{type: ExtensionRef, extensionRef: "
                  "{group: networking.ambit.io, kind: FaultInjection, name: slow}}")  # fmt: skip
    (f,) = found.rules[0].filters
    ref = ExtensionRef("networking.ambit.io", "FaultInjection", "slow")
    assert f == Filter("ExtensionRef", extension=ref)
    assert f.supported
    other = route("{type: ExtensionRef, extensionRef: {group: example.com, kind: X, name: y}}")
    assert not other.rules[0].filters[0].supported


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ("{kind: LocalRateLimit, name: a}", "extensionRef.group: required"),
        ("{group: networking.ambit.io, name: a}", "extensionRef.kind: required"),
        ("{group: networking.ambit.io, kind: LocalRateLimit, name: a, namespace: b}",
         "extensionRef.namespace: unknown field"),
    ],
)  # fmt: skip
def test_a_malformed_extension_ref_is_refused(settings: str, named: str) -> None:
    with pytest.raises(ManifestError, match=named.replace(".", r"\.")):
        route(f"{{type: ExtensionRef, extensionRef: {settings}}}")


def test_documents_round_trip_through_yaml() -> None:
    text = yaml.safe_dump(doc(AMBIT, "LocalRateLimit", {"requests": 3}))
    (limit,) = m.loads(text)
    assert isinstance(limit, m.LocalRateLimit)
