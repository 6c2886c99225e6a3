"""Istio's TCP metrics (names, labels, metering) and the per-connection access log."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from mesh.accesslog import KEYS, log_connection
from mesh.admin import metrics_route
from mesh.http import Request, Response
from mesh.metrics import (
    LABEL_NAMES,
    TcpLabels,
    TcpMetrics,
    workload_name,
)
from mesh.reason import Failure, Reason
from mesh.record import ConnectionRecord
from tests.builders import identity, service, workload
from ztunnel.telemetry import ZtunnelTelemetry

# Written out, not imported: these are the names Istio's dashboards query.
ISTIO_NAMES = {
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
}
ISTIO_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
}

CLIENT = workload(
    "sleep-7d4b9c6f5-x2x9z", "default", labels={"app": "sleep", "pod-template-hash": "7d4b9c6f5"}
)
SERVER = workload(
    "web-v2-5f6d8-abcde",
    "shop",
    ip="10.0.0.20",
    sa="web",
    labels={"app.kubernetes.io/name": "web", "version": "v2", "pod-template-hash": "5f6d8"},
)
WEB = service("web", "shop", backends=[SERVER])


def mtls_labels(flags: str = "-") -> TcpLabels:
    return TcpLabels.of(
        "destination",
        source=CLIENT,
        source_identity=CLIENT.identity,
        destination=SERVER,
        service=WEB,
        security_policy="mutual_tls",
        response_flags=flags,
    )


def sample(registry: CollectorRegistry, name: str, labels: TcpLabels) -> float | None:
    return registry.get_sample_value(name, dict(zip(LABEL_NAMES, labels.values, strict=True)))


def exposition(registry: CollectorRegistry) -> str:
    response = metrics_route(registry)(Request("GET", "/metrics"))
    assert isinstance(response, Response)  # a plain (sync) route
    return response.body.decode()


def test_exposition_has_exactly_istios_metric_and_label_names() -> None:
    registry = CollectorRegistry()
    metrics = TcpMetrics(registry)
    series = metrics.series(mtls_labels())
    series.opened.inc()
    series.closed.inc()
    series.add_bytes(sent=10, received=20)
    text = exposition(registry)
    families = list(text_string_to_metric_families(text))
    # Istio's, and Prometheus's usual process start (no istio_ name: dashboards unmoved;
    # the control plane's observer counts a new proxy's first requests with it).
    process = [s for f in families for s in f.samples if s.name == "process_start_time_seconds"]
    assert [s.labels for s in process] == [{}]
    samples = [s for f in families for s in f.samples if s not in process]
    assert {s.name for s in samples} == ISTIO_NAMES
    assert all(set(s.labels) == ISTIO_LABELS for s in samples)
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert typed == ISTIO_NAMES | {"process_start_time_seconds"}
    # prometheus_client's own rendering names the same counters (plus its _created series)
    assert all(f"\n{name}{{" in generate_latest(registry).decode() for name in ISTIO_NAMES)


def test_labels_come_from_workloads_service_and_identities() -> None:
    labels = mtls_labels(flags="UF")
    assert labels.reporter == "destination"
    assert labels.source_workload == "sleep"  # the Deployment, not the pod
    assert labels.source_workload_namespace == "default"
    assert labels.source_principal == "spiffe://cluster.local/ns/default/sa/sleep-7d4b9c6f5-x2x9z"
    assert labels.source_app == "sleep"
    assert labels.source_version == "unknown"
    assert labels.source_cluster == "Kubernetes"
    assert labels.destination_workload == "web-v2"
    assert labels.destination_workload_namespace == "shop"
    assert labels.destination_principal == "spiffe://cluster.local/ns/shop/sa/web"
    assert labels.destination_app == "web"  # from app.kubernetes.io/name
    assert labels.destination_version == "v2"
    assert labels.destination_service == "web.shop.svc.cluster.local"
    assert labels.destination_service_name == "web"
    assert labels.destination_service_namespace == "shop"
    assert labels.destination_cluster == "Kubernetes"
    assert labels.request_protocol == "tcp"
    assert labels.response_flags == "UF"
    assert labels.connection_security_policy == "mutual_tls"
    assert len(labels.values) == len(ISTIO_LABELS)


def test_unknowns_are_unknown() -> None:
    labels = TcpLabels.of("source", source=None, source_identity=None, destination=None)
    known = {"reporter": "source", "request_protocol": "tcp", "response_flags": "-"}
    for name, value in zip(LABEL_NAMES, labels.values, strict=True):
        assert value == known.get(name, "unknown"), name


def test_plaintext_proves_no_principal() -> None:
    labels = TcpLabels.of(
        "destination",
        source=CLIENT,
        source_identity=None,
        destination=SERVER,
        security_policy="none",
        response_flags="DENY",
    )
    assert (labels.source_principal, labels.destination_principal) == ("unknown", "unknown")
    assert labels.source_workload == "sleep"
    assert labels.destination_service == "unknown"
    explicit = TcpLabels.of(
        "source",
        source=CLIENT,
        source_identity=CLIENT.identity,
        destination=None,
        destination_identity=identity("shop", "web"),
    )
    assert explicit.destination_principal == "spiffe://cluster.local/ns/shop/sa/web"


def test_workload_name_strips_only_a_deployments_suffix() -> None:
    assert workload_name(CLIENT) == "sleep"
    assert workload_name(workload("db-0", labels={"app": "db"})) == "db-0"
    stale = workload("other-name-abc", labels={"pod-template-hash": "7d4b9c6f5"})
    assert workload_name(stale) == "other-name-abc"


def test_connections_opened_and_closed_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = TcpMetrics(registry)
    labels = mtls_labels()
    metrics.series(labels).opened.inc()
    metrics.series(labels).opened.inc()  # a second lookup finds the same series
    metrics.series(labels).closed.inc()
    assert sample(registry, "istio_tcp_connections_opened_total", labels) == 2
    assert sample(registry, "istio_tcp_connections_closed_total", labels) == 1


async def test_long_connections_report_bytes_every_few_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = CollectorRegistry()
    telemetry = ZtunnelTelemetry(TcpMetrics(registry))
    record = ConnectionRecord(
        "inbound",
        src_addr=("10.0.0.10", 40000),
        dst_addr=(SERVER.ip, 8080),
        src_workload=CLIENT,
        src_identity=CLIENT.identity,
        dst_workload=SERVER,
        dst_service=WEB,
        mtls=True,
    )
    labels = mtls_labels()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(telemetry.flush_periodically, 5.0)
            telemetry.opened(record)
            record.stats.sent += 1000  # inbound, relay(peer, app): 1000 bytes from the client
            await trio.sleep(4.9)
            assert sample(registry, "istio_tcp_received_bytes_total", labels) == 0  # not yet
            await trio.sleep(0.2)
            assert sample(registry, "istio_tcp_received_bytes_total", labels) == 1000
            record.stats.sent += 1
            telemetry.closed(record, None)  # the rest at close, never counted twice
            await trio.sleep(10)
            assert sample(registry, "istio_tcp_received_bytes_total", labels) == 1001
            assert sample(registry, "istio_tcp_connections_closed_total", labels) == 1
            nursery.cancel_scope.cancel()


def test_connections_shed_under_load_are_counted_without_a_log_line() -> None:
    registry = CollectorRegistry()
    telemetry = ZtunnelTelemetry(TcpMetrics(registry))

    def record() -> ConnectionRecord:
        return ConnectionRecord(
            "inbound",
            src_addr=("10.0.0.10", 40000),
            dst_addr=(SERVER.ip, 8080),
            src_workload=CLIENT,
            src_identity=CLIENT.identity,
            dst_workload=SERVER,
            dst_service=WEB,
            mtls=True,
        )

    overloaded = Failure(Reason.OVERLOADED, "too many pending connections from 10.0.0.10")
    with capture_logs() as logs:
        telemetry.denied(record(), overloaded, log=False)  # refused at once
        cut = record()
        telemetry.opened(cut)
        cut.stats.sent += 10
        telemetry.closed(cut, overloaded, log=False)  # cut while half-closed
    assert logs == []
    assert sample(registry, "istio_tcp_connections_opened_total", mtls_labels("CONNECT")) == 1
    assert sample(registry, "istio_tcp_connections_closed_total", mtls_labels("CONNECT")) == 1
    assert sample(registry, "istio_tcp_connections_opened_total", mtls_labels()) == 1
    assert sample(registry, "istio_tcp_connections_closed_total", mtls_labels()) == 1
    assert sample(registry, "istio_tcp_received_bytes_total", mtls_labels()) == 10


# --- The access log --------------------------------------------------------------------------


def test_access_log_has_fixed_keys_and_a_constant_event() -> None:
    with capture_logs() as logs:
        log_connection(
            direction="inbound",
            src_addr="10.0.0.10:40000",
            dst_addr="10.0.0.20:8080",
            src_workload=CLIENT,
            src_identity=CLIENT.identity,
            dst_workload=SERVER,
            dst_service=WEB,
            dst_identity=SERVER.identity,
            bytes_sent=10,
            bytes_recv=20,
            duration_ms=12.34567,
        )
    [entry] = logs
    assert entry.pop("event") == "connection_complete"
    assert entry.pop("log_level") == "info"
    assert list(entry) == list(KEYS)
    assert entry["src.workload"] == "sleep-7d4b9c6f5-x2x9z"  # the pod, as ztunnel logs it
    assert entry["src.identity"] == "spiffe://cluster.local/ns/default/sa/sleep-7d4b9c6f5-x2x9z"
    assert entry["dst.service"] == "web.shop.svc.cluster.local"
    assert entry["dst.namespace"] == "shop"
    assert (entry["bytes_sent"], entry["bytes_recv"], entry["duration_ms"]) == (10, 20, 12.346)
    assert entry["reason"] is None
    assert entry["error"] is None


def test_denied_connection_logs_its_reason_with_unknowns_as_none() -> None:
    with capture_logs() as logs:
        log_connection(
            direction="inbound",
            src_addr="10.0.0.99:40000",
            dst_addr="10.0.0.20:8080",
            dst_workload=SERVER,
            denied=True,
            failure=Failure(Reason.POLICY_DENIED, "denied by policy shop/deny-all"),
        )
    [entry] = logs
    assert (entry["event"], entry["log_level"]) == ("connection_denied", "warning")
    assert set(entry) == {*KEYS, "event", "log_level"}
    assert entry["src.workload"] is None
    assert entry["src.identity"] is None
    assert entry["reason"] == "policy_denied"
    assert entry["error"] == "denied by policy shop/deny-all"


def test_baggage_carries_the_source_labels_a_waypoint_reports() -> None:
    from mesh.metrics import baggage, parse_baggage
    from tests.builders import workload as pod
    from waypoint.telemetry import side

    web = pod("web-7d4b9c-x2x9z", labels={"app": "web", "version": "v2",
                                          "pod-template-hash": "7d4b9c"})  # fmt: skip
    sent = baggage(web)
    assert sent == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=web,"
        "service.name=web,service.version=v2"
    )
    labels = side("source", None, web.identity, parse_baggage(sent + ";prop=1"))
    assert labels["source_workload"] == "web"
    assert labels["source_app"] == "web"
    assert labels["source_version"] == "v2"
    assert labels["source_workload_namespace"] == "default"
    assert labels == side("source", web, web.identity) | {"source_canonical_revision": "v2"}
