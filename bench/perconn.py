"""What ztunnel does per connection besides moving bytes: ``python -m bench.perconn``.

Runs ztunnel's own per-connection code on a snapshot of 1,000 Services and 50
AuthorizationPolicies (``--services``, ``--policies``) with no sockets: the
inbound record (source workload by IP, the Service of the endpoint), L4 policy
(selection and evaluation), the metric series and counters, the access-log
line (rendered to JSON, written nowhere), and the pending and half-closed
bookkeeping (:class:`ztunnel.admission.Admission`: admitted, released,
half-closed, ended, with the connection's cancel scope). Each step is timed
alone, then all together as ztunnel runs them.

For the steps that issue 9 moved from per-connection to per-snapshot work, the
way it was done before (a scan of every Service, policy selection every time,
label sets and counter lookups built every time) is timed beside it, written
out here as the reference. Results are microseconds per connection, median of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from mesh.accesslog import log_connection
from mesh.authz import Connection, evaluate
from mesh.metrics import TcpLabels, TcpMetrics
from mesh.model import MeshSnapshot, Service, Workload
from mesh.reason import Failure, Reason
from mesh.record import ConnectionRecord
from mesh.telemetry import configure_logging
from tests.builders import allow, identity, rule, service, snapshot, source, workload
from ztunnel.admission import Active, Admission
from ztunnel.telemetry import ZtunnelTelemetry


def build(services: int, policies: int) -> tuple[MeshSnapshot, Workload, Workload]:
    client = workload("client", "shop", ip="10.1.0.1", labels={"app": "client"})
    server = workload(
        "web-5f6d8-abcde",
        "shop",
        ip="10.1.0.2",
        sa="web",
        labels={"app": "web", "version": "v1", "pod-template-hash": "5f6d8"},
    )
    others = [
        workload(f"pod-{i}", f"ns-{i % 50}", ip=f"10.2.{i // 250}.{i % 250 + 1}")
        for i in range(services)
    ]
    svcs = [
        service(f"svc-{i}", f"ns-{i % 50}", vip=f"10.96.{i // 250}.{i % 250 + 1}",
                backends=[others[i]])
        for i in range(services - 1)
    ] + [service("web", "shop", vip="10.97.0.1", ports={80: 8080}, backends=[server])]  # fmt: skip
    pols = [
        allow(f"p-{i}", rule([source(principals=[f"cluster.local/ns/x/sa/{i}"])]),
              namespace="shop" if i % 2 else f"ns-{i}", selector={"app": f"a{i}"})
        for i in range(policies - 1)
    ] + [allow("web", rule([source(namespaces=["shop"])]), namespace="shop",
               selector={"app": "web"})]  # fmt: skip
    return snapshot(client, server, *others, *svcs, *pols), client, server


def per_call(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Median microseconds per call of ``fn`` over ``repeat`` runs of ``n`` calls."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("-n", type=int, default=2000, help="connections per run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    # The access log as ztunnel writes it (JSON, as configured in production), to a sink
    # that keeps nothing.
    configure_logging("info", json=True, stream=open(os.devnull, "w"))  # noqa: SIM115
    snap, client, server = build(args.services, args.policies)
    peer = (client.ip, 40000)
    dst = (server.ip, 8080)
    metrics = TcpMetrics(CollectorRegistry())
    telemetry = ZtunnelTelemetry(metrics)
    peer_id = identity("shop", "client")

    def record() -> ConnectionRecord:
        return ConnectionRecord(
            "inbound",
            src_addr=peer,
            dst_addr=dst,
            src_workload=snap.workload_by_ip(peer[0]),
            src_identity=peer_id,
            dst_workload=server,
            dst_service=snap.service_of_endpoint(server.uid, dst[1]),
            mtls=True,
        )

    def scan_service() -> Service | None:  # the pre-index way: every Service, every time
        for svc in snap.services:
            for endpoint in svc.endpoints:
                if endpoint.workload_uid == server.uid and any(
                    t == dst[1] for _, t in endpoint.ports
                ):
                    return svc
        return None

    conn = Connection(src_ip=peer[0], src_identity=peer_id, dst_workload=server, dst_port=8080)

    def decide_uncached() -> object:
        chosen = tuple(a for a in snap.authorizations if a.applies_to(server))
        return evaluate(conn, chosen)

    def decide() -> object:
        return evaluate(conn, snap.policies_for(server))

    rec = record()

    def labels_uncached() -> None:
        labels = TcpLabels.of(
            "destination",
            source=rec.src_workload,
            source_identity=rec.src_identity,
            destination=rec.dst_workload,
            service=rec.dst_service,
            security_policy="mutual_tls",
        )
        series = metrics.series(labels)  # the four label lookups, every time
        series.opened.inc()
        series.closed.inc()
        series.add_bytes(100, 100)

    admission = Admission()

    def pending(r: ConnectionRecord = rec) -> None:  # as ztunnel: admit, release, half-close
        src = peer[0]
        admission.admit(src)
        admission.release(src)
        active = Active(r)  # with its cancel scope
        admission.half_closed(active)
        admission.work.ended(active)

    def whole() -> None:
        r = record()
        decide()
        pending(r)
        telemetry.opened(r)
        r.stats.sent += 100
        r.stats.received += 100
        telemetry.closed(r, None)

    def whole_before() -> None:  # the same work, the pre-index way
        r = ConnectionRecord(
            "inbound",
            src_addr=peer,
            dst_addr=dst,
            src_workload=snap.workload_by_ip(peer[0]),
            src_identity=peer_id,
            dst_workload=server,
            dst_service=scan_service(),
            mtls=True,
        )
        decide_uncached()
        labels_uncached()
        log_connection(
            direction="inbound",
            src_addr=f"{peer[0]}:{peer[1]}",
            dst_addr=f"{dst[0]}:{dst[1]}",
            src_workload=r.src_workload,
            src_identity=r.src_identity,
            dst_workload=r.dst_workload,
            dst_service=r.dst_service,
            dst_identity=server.identity,
            bytes_sent=100,
            bytes_recv=100,
            duration_ms=1.0,
        )

    def denied() -> None:
        telemetry.denied(record(), Failure(Reason.POLICY_DENIED, "denied by policy shop/x"))

    def opened_closed() -> None:
        telemetry.opened(rec)
        telemetry.closed(rec, None)

    n, repeat = args.n, args.repeat
    results = {
        "services": args.services,
        "policies": args.policies,
        "service_of_endpoint_scan_us": per_call(scan_service, n, repeat),
        "service_of_endpoint_indexed_us": per_call(
            lambda: snap.service_of_endpoint(server.uid, dst[1]), n, repeat
        ),
        "policy_selection_each_time_us": per_call(decide_uncached, n, repeat),
        "policy_selection_memoised_us": per_call(decide, n, repeat),
        "labels_and_counters_each_time_us": per_call(labels_uncached, n, repeat),
        "record_us": per_call(record, n, repeat),
        "telemetry_open_close_with_log_us": per_call(opened_closed, n, repeat),
        "denied_with_log_us": per_call(denied, n, repeat),
        "pending_bookkeeping_us": per_call(pending, n, repeat),
        "whole_connection_before_us": per_call(whole_before, n, repeat),
        "whole_connection_us": per_call(whole, n, repeat),
    }
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:8.1f}" if isinstance(value, float) else f"{value:8d}"
        print(f"{key:<{width}} {shown}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
