"""One typed reason per refusal or failure, and everything derived from it: the Istio
response flag of the metrics, the access log's reason code, the HBONE status."""

from __future__ import annotations

import errno

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from mesh.metrics import TcpMetrics
from mesh.reason import Failure, Reason, reason_for_dial_error, reason_for_rule
from mesh.record import ConnectionRecord
from tests.builders import identity, service, workload
from ztunnel.telemetry import ZtunnelTelemetry

# Written out, not derived: Istio's ztunnel reports DENY for policy decisions and CONNECT
# for failures to connect (src/proxy/metrics.rs); its dashboards filter on these.
EXPECTED = [
    (Reason.POLICY_DENIED, "DENY", 403),
    (Reason.STRICT_PLAINTEXT, "DENY", 403),
    (Reason.DESTINATION_REFUSED, "CONNECT", 503),
    (Reason.DESTINATION_UNREACHABLE, "CONNECT", 503),
    (Reason.NO_HEALTHY_ENDPOINT, "CONNECT", 503),
    (Reason.TIMEOUT, "CONNECT", 504),
    (Reason.IDENTITY_MISMATCH, "CONNECT", 503),
    (Reason.NO_CERTIFICATE, "CONNECT", 503),
    (Reason.TLS_FAILED, "CONNECT", 503),
    (Reason.BAD_REQUEST, "CONNECT", 400),
    (Reason.PROTOCOL_ERROR, "CONNECT", 502),
    (Reason.CONNECTION_RESET, "CONNECT", 502),
    (Reason.INTERNAL_ERROR, "CONNECT", 500),
    (Reason.UNAUTHENTICATED, "DENY", 401),
    (Reason.NOT_AUTHORIZED, "DENY", 403),
    (Reason.DRAIN_DEADLINE, "CONNECT", 503),
    (Reason.OVERLOADED, "CONNECT", 503),
    (Reason.UNAVAILABLE, "CONNECT", 503),
]


def test_every_reason_is_in_the_table() -> None:
    assert {reason for reason, _, _ in EXPECTED} == set(Reason)


@pytest.mark.parametrize(("reason", "flag", "status"), EXPECTED)
def test_flag_and_status_of_each_reason(reason: Reason, flag: str, status: int) -> None:
    assert (reason.flag, reason.status) == (flag, status)


@pytest.mark.parametrize(("reason", "flag", "status"), EXPECTED)
def test_a_refused_connection_is_counted_and_logged_with_its_reason(
    reason: Reason, flag: str, status: int
) -> None:
    del status
    registry = CollectorRegistry()
    telemetry = ZtunnelTelemetry(TcpMetrics(registry))
    server = workload("web-1", "shop", ip="10.0.0.20", sa="web")
    record = ConnectionRecord(
        "inbound",
        src_addr=("10.0.0.10", 40000),
        dst_addr=("10.0.0.20", 8080),
        src_identity=identity("default", "sleep"),
        dst_workload=server,
        dst_service=service("web", "shop", backends=[server]),
        mtls=True,
    )
    with capture_logs() as logs:
        telemetry.denied(record, Failure(reason, "details stay local"))
    samples = [
        s
        for family in registry.collect()
        for s in family.samples
        if s.name == "istio_tcp_connections_opened_total"
    ]
    assert [s.labels["response_flags"] for s in samples] == [flag]
    assert [s.value for s in samples] == [1]
    [entry] = logs
    assert (entry["event"], entry["reason"], entry["error"]) == (
        "connection_denied",
        reason.value,
        "details stay local",
    )


def test_codes_round_trip_and_unknown_codes_are_none() -> None:
    for reason in Reason:
        assert Reason.from_code(reason.value) is reason
    assert Reason.from_code(None) is None
    assert Reason.from_code("") is None
    assert Reason.from_code("denied by policy shop/deny-all") is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            Reason.DESTINATION_REFUSED,
        ),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.DESTINATION_UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Reason.DESTINATION_UNREACHABLE),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), Reason.TIMEOUT),
        (TimeoutError(), Reason.TIMEOUT),
    ],
)
def test_dial_errors_map_by_errno(error: OSError, reason: Reason) -> None:
    assert reason_for_dial_error(error) is reason


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("no-certificate", Reason.NO_CERTIFICATE),
        ("unexpected-identity", Reason.IDENTITY_MISMATCH),
        ("trust-domain", Reason.IDENTITY_MISMATCH),
        ("not-spiffe", Reason.IDENTITY_MISMATCH),
        ("uri-san-count", Reason.IDENTITY_MISMATCH),
        ("timeout", Reason.TIMEOUT),
        ("chain", Reason.TLS_FAILED),
        ("expired", Reason.TLS_FAILED),
        ("alpn", Reason.TLS_FAILED),
        ("tls-version", Reason.TLS_FAILED),
    ],
)
def test_tls_rules_map_to_reasons(rule: str, reason: Reason) -> None:
    assert reason_for_rule(rule) is reason
