"""What Istio's Grafana dashboards need of our metrics, written down by hand: the Istio
Service dashboard and the Istio Workload dashboard (``manifests/addons/dashboards/`` of
istio/istio, read at commit 86c9f01fd73, 2026-08-22). For every metric their PromQL
queries (panels and template variables) read: the label names they filter or group by,
and the label values they filter on. Our own summary, not their JSON.

Both dashboards choose the reporter from a fixed list, ``source`` and ``destination``
(variable ``qrep``), and some panels name one of the two outright. Neither reads the gRPC
message counters or any series with ``reporter="waypoint"`` (istio/istio#61815 asks for
it; PR #61816 would match ``$qrep|waypoint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Label names every one of these queries' metrics is filtered or grouped by.
_WHO: Final = (
    "reporter",
    "connection_security_policy",
    "destination_service",
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
)


@dataclass(frozen=True)
class Need:
    """One metric the dashboards read: the sample name queried (``or`` in the query: any
    of ``names`` will do) and the label names used."""

    names: tuple[str, ...]
    labels: tuple[str, ...]


NEEDS: Final = (
    Need(
        ("istio_requests_total",),
        (*_WHO, "response_code", "destination_principal", "source_cluster", "destination_cluster"),
    ),
    # Latency: milliseconds, or seconds where a proxy reports those (``or`` in the query).
    Need(
        ("istio_request_duration_milliseconds_bucket", "istio_request_duration_seconds_bucket"),
        (*_WHO, "le"),
    ),
    Need(("istio_request_bytes_bucket",), (*_WHO, "le")),
    Need(("istio_response_bytes_bucket",), (*_WHO, "le")),
    Need(("istio_tcp_received_bytes_total",), _WHO),
    Need(("istio_tcp_sent_bytes_total",), (*_WHO, "source_cluster", "destination_cluster")),
)

# Label values the queries filter on.
REPORTERS: Final = frozenset({"source", "destination"})  # ``qrep``'s choices, and literals
MUTUAL_TLS: Final = "mutual_tls"  # connection_security_policy = (and !=) this
SERVER_ERROR: Final = r"5.*"  # response_code !~ this: the success rate
SPIFFE_PRINCIPAL: Final = r"spiffe.*"  # destination_principal =~ (and !~) this: mTLS or not
