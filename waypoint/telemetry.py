"""The waypoint's request telemetry, with Istio's names and labels so Istio's Grafana
dashboards read it: ``istio_requests_total``, ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes`` (histograms), every series with
``reporter="waypoint"``; and one JSON access-log line per request.

A request's source is the workload that proved its identity to the waypoint (the HBONE
peer), found in the snapshot by that identity and the address ztunnel forwarded; its
destination the endpoint pod that answered (or, when none did, the Service).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from typing import Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from mesh.identity import SpiffeId
from mesh.metrics import APP_LABELS, CLUSTER, UNKNOWN, VERSION_LABELS, workload_name
from mesh.model import Service, Workload

log = structlog.get_logger("waypoint.access")

# Istio's buckets for request duration (ms) and sizes (bytes).
DURATION_BUCKETS: Final = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                           30000, 60000, 300000, 600000, 1800000, 3600000)  # fmt: skip
SIZE_BUCKETS: Final = tuple(float(10**k) for k in range(9))
CANONICAL_NAME_LABELS: Final = ("service.istio.io/canonical-name", *APP_LABELS)
CANONICAL_REVISION_LABELS: Final = ("service.istio.io/canonical-revision", *VERSION_LABELS)


@dataclass(frozen=True)
class RequestLabels:
    """One request's label values; field names are Istio's label names."""

    reporter: str = "waypoint"
    source_workload: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    source_app: str = UNKNOWN
    source_version: str = UNKNOWN
    source_canonical_service: str = UNKNOWN
    source_canonical_revision: str = "latest"
    source_cluster: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_principal: str = UNKNOWN
    destination_app: str = UNKNOWN
    destination_version: str = UNKNOWN
    destination_service: str = UNKNOWN
    destination_service_name: str = UNKNOWN
    destination_service_namespace: str = UNKNOWN
    destination_canonical_service: str = UNKNOWN
    destination_canonical_revision: str = "latest"
    destination_cluster: str = UNKNOWN
    request_protocol: str = "http"
    response_code: str = "0"
    grpc_response_status: str = ""
    response_flags: str = "-"
    connection_security_policy: str = "mutual_tls"

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(astuple(self))


LABEL_NAMES: Final = tuple(f.name for f in fields(RequestLabels))


def _label(w: Workload, keys: tuple[str, ...]) -> str | None:
    return next((v for k in keys if (v := w.label(k))), None)


def side(
    prefix: str,
    w: Workload | None,
    identity: SpiffeId | None,
    baggage: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``source_*`` or ``destination_*`` labels of workload ``w``; when the snapshot does
    not know it, what the source ztunnel's ``baggage`` says of it (Istio's keys)."""
    out = {f"{prefix}_principal": str(identity) if identity is not None else UNKNOWN}
    if w is None and baggage:
        name = baggage.get("k8s.deployment.name") or baggage.get("k8s.pod.name") or UNKNOWN
        app = baggage.get("service.name", UNKNOWN)
        version = baggage.get("service.version", UNKNOWN)
        out |= {
            f"{prefix}_workload": name,
            f"{prefix}_workload_namespace": baggage.get("k8s.namespace.name", UNKNOWN),
            f"{prefix}_app": app,
            f"{prefix}_version": version,
            f"{prefix}_canonical_service": app,
            f"{prefix}_canonical_revision": version,
            f"{prefix}_cluster": baggage.get("k8s.cluster.name", UNKNOWN),
        }
    if w is not None:
        name = workload_name(w)
        out |= {
            f"{prefix}_workload": name,
            f"{prefix}_workload_namespace": w.namespace,
            f"{prefix}_app": _label(w, APP_LABELS) or UNKNOWN,
            f"{prefix}_version": _label(w, VERSION_LABELS) or UNKNOWN,
            f"{prefix}_canonical_service": _label(w, CANONICAL_NAME_LABELS) or name,
            f"{prefix}_canonical_revision": _label(w, CANONICAL_REVISION_LABELS) or "latest",
            f"{prefix}_cluster": CLUSTER,
        }
    return out


def service_labels(service: Service | None) -> dict[str, str]:
    if service is None:
        return {}
    return {
        "destination_service": service.hostname,
        "destination_service_name": service.name,
        "destination_service_namespace": service.namespace,
    }


class RequestMetrics:
    """Istio's request metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "istio_requests", "Requests handled by the waypoint", LABEL_NAMES, registry=registry
        )
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration, first request byte to last response byte (ms)",
            LABEL_NAMES,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Histogram(
            "istio_request_bytes", "Request sizes (headers and body)", LABEL_NAMES,
            buckets=SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.response_bytes = Histogram(
            "istio_response_bytes", "Response sizes (headers and body)", LABEL_NAMES,
            buckets=SIZE_BUCKETS, registry=registry,
        )  # fmt: skip

    def record(
        self, labels: RequestLabels, duration_ms: float, request_bytes: int, response_bytes: int
    ) -> None:
        values = labels.values
        self.requests.labels(*values).inc()
        self.duration.labels(*values).observe(duration_ms)
        self.request_bytes.labels(*values).observe(request_bytes)
        self.response_bytes.labels(*values).observe(response_bytes)
