"""ztunnel's TCP metrics, with Istio's names and labels so existing dashboards work.

Four counters, each labelled with :data:`LABEL_NAMES`:
``istio_tcp_connections_opened_total``, ``istio_tcp_connections_closed_total``,
``istio_tcp_sent_bytes_total`` and ``istio_tcp_received_bytes_total``.

Bytes follow Istio: ``received`` is what the client sent towards the destination
(request bytes), ``sent`` what went back to the client (response bytes), for
either reporter. The relay does not touch a counter per chunk: it counts in its
``RelayStats``, and the proxy's telemetry moves the bytes to the counters at
close and, for long connections, every few seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from functools import cached_property
from typing import Literal, TypeAlias
from urllib.parse import quote, unquote

from prometheus_client import CollectorRegistry, Counter

from mesh.identity import SpiffeId
from mesh.model import Service, Workload

Reporter: TypeAlias = Literal["source", "destination", "waypoint"]
SecurityPolicy: TypeAlias = Literal["mutual_tls", "none", "unknown"]

UNKNOWN = "unknown"
CLUSTER = "Kubernetes"  # Istio's default cluster id
NO_FLAGS = "-"

# Kubernetes label keys the metric labels are read from, in order of preference.
APP_LABELS = ("app", "app.kubernetes.io/name")
VERSION_LABELS = ("version", "app.kubernetes.io/version")
POD_TEMPLATE_HASH = "pod-template-hash"  # set on a Deployment's pods


@dataclass(frozen=True)
class TcpLabels:
    """The label values of one connection's series; field names are Istio's label names."""

    reporter: Reporter
    source_workload: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    source_app: str = UNKNOWN
    source_version: str = UNKNOWN
    source_cluster: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_principal: str = UNKNOWN
    destination_app: str = UNKNOWN
    destination_version: str = UNKNOWN
    destination_service: str = UNKNOWN
    destination_service_name: str = UNKNOWN
    destination_service_namespace: str = UNKNOWN
    destination_cluster: str = UNKNOWN
    request_protocol: str = "tcp"
    response_flags: str = NO_FLAGS
    connection_security_policy: SecurityPolicy = "unknown"

    @classmethod
    def of(
        cls,
        reporter: Reporter,
        *,
        source: Workload | None,
        source_identity: SpiffeId | None,
        destination: Workload | None,
        destination_identity: SpiffeId | None = None,
        service: Service | None = None,
        security_policy: SecurityPolicy = "unknown",
        response_flags: str = NO_FLAGS,
    ) -> TcpLabels:
        """Labels for a connection: ``source_identity`` is the principal as proved (the peer's
        certificate inbound, our own outbound), ``None`` when unproved; ``destination_identity``
        likewise, defaulting to the destination workload's own when mTLS was used."""
        mtls = security_policy == "mutual_tls"
        if destination_identity is None and destination is not None and mtls:
            destination_identity = destination.identity
        src, dst = _Side.of(source), _Side.of(destination)
        return cls(
            reporter=reporter,
            source_workload=src.workload,
            source_workload_namespace=src.namespace,
            source_principal=_principal(source_identity),
            source_app=src.app,
            source_version=src.version,
            source_cluster=src.cluster,
            destination_workload=dst.workload,
            destination_workload_namespace=dst.namespace,
            destination_principal=_principal(destination_identity),
            destination_app=dst.app,
            destination_version=dst.version,
            destination_service=service.hostname if service else UNKNOWN,
            destination_service_name=service.name if service else UNKNOWN,
            destination_service_namespace=service.namespace if service else UNKNOWN,
            destination_cluster=dst.cluster,
            response_flags=response_flags,
            connection_security_policy=security_policy,
        )

    @cached_property
    def values(self) -> tuple[str, ...]:
        """The values in :data:`LABEL_NAMES` order."""
        return tuple(astuple(self))


LABEL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TcpLabels))


@dataclass(frozen=True)
class _Side:
    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    cluster: str = UNKNOWN

    @classmethod
    def of(cls, w: Workload | None) -> _Side:
        if w is None:
            return cls()
        return cls(
            workload_name(w),
            w.namespace,
            first_label(w, APP_LABELS) or UNKNOWN,
            first_label(w, VERSION_LABELS) or UNKNOWN,
            CLUSTER,
        )


def workload_name(w: Workload) -> str:
    """The name of the workload that owns the pod, as Istio reports it: a Deployment's pod
    ``web-7d4b9c-x2x9z`` (label ``pod-template-hash=7d4b9c``) is workload ``web``; any other
    pod is its own name. Keeps one series per Deployment, not one per pod."""
    template_hash = w.label(POD_TEMPLATE_HASH)
    if template_hash:
        match = re.fullmatch(rf"(.+)-{re.escape(template_hash)}-[a-z0-9]+", w.name)
        if match:
            return match[1]
    return w.name


def first_label(w: Workload, keys: Iterable[str]) -> str | None:
    """The value of the first of ``keys`` that ``w`` has a label for."""
    return next((v for k in keys if (v := w.label(k))), None)


def _principal(identity: SpiffeId | None) -> str:
    return str(identity) if identity is not None else UNKNOWN


class TcpMetrics:
    """The four counters, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            # prometheus_client appends ``_total`` to a counter's samples.
            return Counter(name, doc, LABEL_NAMES, registry=registry)

        self.connections_opened = counter(
            "istio_tcp_connections_opened", "Total TCP connections opened"
        )
        self.connections_closed = counter(
            "istio_tcp_connections_closed", "Total TCP connections closed"
        )
        self.sent_bytes = counter(
            "istio_tcp_sent_bytes", "Total bytes sent back to the client (response bytes)"
        )
        self.received_bytes = counter(
            "istio_tcp_received_bytes", "Total bytes received from the client (request bytes)"
        )

    def series(self, labels: TcpLabels) -> TcpSeries:
        """The four counters' children for ``labels``, resolved once."""
        values = labels.values
        return TcpSeries(
            labels,
            self.connections_opened.labels(*values),
            self.connections_closed.labels(*values),
            self.sent_bytes.labels(*values),
            self.received_bytes.labels(*values),
        )


@dataclass(frozen=True, eq=False)
class TcpSeries:
    """One label set's four counter children: counting on them skips the label lookup."""

    labels: TcpLabels
    opened: Counter
    closed: Counter
    sent: Counter
    received: Counter

    def add_bytes(self, sent: int, received: int) -> None:
        if sent:
            self.sent.inc(sent)
        if received:
            self.received.inc(received)


SeriesKey: TypeAlias = tuple[object, ...]


class SeriesCache:
    """Label sets and their counter children, computed once per distinct connection shape.

    The key holds the *identity* of the model objects of a record (snapshot objects are
    immutable, so the same object always yields the same labels) and the value keeps
    them alive, so an id is never reused while its entry exists. Bounded: it starts
    over when full (a new snapshot brings new objects, so old entries go unused)."""

    def __init__(self, metrics: TcpMetrics, limit: int = 4096) -> None:
        self._metrics = metrics
        self._limit = limit
        self._entries: dict[SeriesKey, tuple[TcpSeries, tuple[object, ...]]] = {}

    def get(
        self,
        reporter: Reporter,
        *,
        source: Workload | None,
        source_identity: SpiffeId | None,
        destination: Workload | None,
        service: Service | None,
        security_policy: SecurityPolicy,
        response_flags: str = NO_FLAGS,
    ) -> TcpSeries:
        key = (reporter, id(source), source_identity, id(destination), id(service),
               security_policy, response_flags)  # fmt: skip
        entry = self._entries.get(key)
        if entry is None:
            labels = TcpLabels.of(
                reporter,
                source=source,
                source_identity=source_identity,
                destination=destination,
                service=service,
                security_policy=security_policy,
                response_flags=response_flags,
            )
            if len(self._entries) >= self._limit:
                self._entries.clear()
            entry = (self._metrics.series(labels), (source, destination, service))
            self._entries[key] = entry
        return entry[0]


def baggage(w: Workload | None) -> str:
    """The W3C ``baggage`` a source ztunnel sends on a CONNECT to a waypoint, Istio's keys:
    the source's cluster, namespace, workload, canonical service and revision."""
    if w is None:
        return ""
    side = _Side.of(w)
    items = [
        ("k8s.cluster.name", CLUSTER),
        ("k8s.namespace.name", w.namespace),
        ("k8s.deployment.name" if w.label(POD_TEMPLATE_HASH) else "k8s.pod.name", side.workload),
        ("service.name", side.app if side.app != UNKNOWN else side.workload),
        ("service.version", side.version if side.version != UNKNOWN else "latest"),
    ]
    return ",".join(f"{k}={quote(v, safe='')}" for k, v in items)


def parse_baggage(value: str | None) -> dict[str, str]:
    """The members of a ``baggage`` header (properties after ``;`` dropped)."""
    out: dict[str, str] = {}
    for member in (value or "").split(","):
        key, sep, rest = member.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(rest.partition(";")[0].strip())
    return out
