"""The waypoint's request telemetry, with Istio's names and labels so Istio's Grafana
dashboards read it: ``istio_requests_total``, ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes`` (histograms), for gRPC
``istio_request_messages_total`` and ``istio_response_messages_total``, every series with
``reporter="waypoint"``; and one JSON access-log line per request (:func:`account`).

A request's source is the workload that proved its identity to the waypoint (the HBONE
peer), found in the snapshot by that identity and the address ztunnel forwarded; its
destination the endpoint pod that answered (or, when none did, the Service). While
somebody taps (``ambit tap``, :mod:`mesh.tap`), :attr:`RequestMetrics.tap` takes each
finished request too (:meth:`waypoint.session.Session.account`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from json.encoder import encode_basestring_ascii as _json_string
from operator import attrgetter
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry

from mesh.identity import SpiffeId
from mesh.metrics import (
    APP_LABELS,
    CLUSTER,
    UNKNOWN,
    VERSION_LABELS,
    TcpMetrics,
    first_label,
    workload_name,
)
from mesh.model import Service, Workload
from mesh.tap import ProxyTap
from mesh.telemetry import write_info_line
from waypoint.request_series import RequestSeries, Series

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
        values: tuple[str, ...] = _VALUES(self)
        return values


LABEL_NAMES: Final = tuple(f.name for f in fields(RequestLabels))
_VALUES: Final = attrgetter(*LABEL_NAMES)
SERIES_LIMIT: Final = 4096  # label sets whose children are kept; past it, start over


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
            f"{prefix}_app": first_label(w, APP_LABELS) or UNKNOWN,
            f"{prefix}_version": first_label(w, VERSION_LABELS) or UNKNOWN,
            f"{prefix}_canonical_service": first_label(w, CANONICAL_NAME_LABELS) or name,
            f"{prefix}_canonical_revision": first_label(w, CANONICAL_REVISION_LABELS) or "latest",
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
        self.tcp = TcpMetrics(registry)  # connections relayed as TCP, reporter="waypoint"
        self.tap = ProxyTap()  # served over the config stream (ConfigClient's tap)
        # The labels of the sides and of whole requests seen before, by the identity of the
        # (immutable) snapshot objects they come from; each value keeps those objects alive,
        # so an id is never reused while its entry exists. Bounded: starts over when full.
        self._sides: dict[tuple[Any, ...], tuple[Any, dict[str, str]]] = {}
        self._labels: dict[tuple[Any, ...], Shape] = {}
        self.series = RequestSeries(registry, LABEL_NAMES, DURATION_BUCKETS, SIZE_BUCKETS)

    def side(
        self,
        prefix: str,
        w: Workload | None,
        identity: SpiffeId | None,
        baggage: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """:func:`side`, computed once per workload, identity and baggage."""
        key = (prefix, id(w), identity, tuple(baggage.items()) if baggage else None)
        entry = self._sides.get(key)
        if entry is None:
            if len(self._sides) >= SERIES_LIMIT:
                self._sides.clear()
            entry = self._sides[key] = (w, side(prefix, w, identity, baggage))
        return entry[1]

    def shape(
        self,
        source: dict[str, str],
        destination: dict[str, str],
        service: Service | None,
        done: Finished,
    ) -> Shape:
        """A request's :class:`Shape`, made once per distinct one."""
        key = (id(source), id(destination), id(service), done.grpc, done.status,
               done.grpc_status, done.flags)  # fmt: skip
        shape = self._labels.get(key)
        if shape is None:
            if len(self._labels) >= SERIES_LIMIT:
                self._labels.clear()
            labels = RequestLabels(
                **source,
                **destination,
                **service_labels(service),
                request_protocol="grpc" if done.grpc else "http",
                response_code=str(done.status),
                grpc_response_status=done.grpc_status,
                response_flags=done.flags,
            )
            identities = (
                f'"src_identity": {_s(source.get("source_principal"))}, '
                f'"dst_identity": {_s(destination.get("destination_principal"))}, '
                f'"dst_service": {_s(service.hostname if service else None)}'
            )
            shape = Shape(labels, self.series.of(labels.values, grpc=done.grpc), identities,
                          (source, destination, service))  # fmt: skip
            self._labels[key] = shape
        return shape

    def messages(self, labels: RequestLabels, sent: int, received: int) -> None:
        """gRPC messages of one call: ``sent`` by the client, ``received`` by it."""
        series = self.series.of(labels.values, grpc=labels.request_protocol == "grpc")
        series.request_messages += sent
        series.response_messages += received

    def record(
        self, labels: RequestLabels, duration_ms: float, request_bytes: int, response_bytes: int
    ) -> None:
        series = self.series.of(labels.values, grpc=labels.request_protocol == "grpc")
        series.record(duration_ms, request_bytes, response_bytes)


@dataclass(frozen=True)
class Shape:
    """What requests of one source, destination, Service and outcome share: their labels,
    their series, the access line's last members (the identities and the Service), and
    the snapshot objects they were made of (kept alive: their ids are in the key)."""

    labels: RequestLabels
    series: Series
    identities: str
    made_of: tuple[Any, ...]


_ids = random.Random()  # request ids need to be unique, not secret: no system call each


def new_request_id() -> str:
    """A random UUID (version 4) for ``x-request-id``, as Envoy makes one."""
    h = "%032x" % ((_ids.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID4_CLEAR: Final = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF  # version and variant bits
_UUID4_SET: Final = 0x00000000_0000_4000_8000_000000000000  # version 4, RFC 4122 variant


@dataclass
class Finished:
    """One request as it ended, for its series and its access-log line."""

    method: str
    authority: str
    path: str
    protocol: str  # "HTTP/1.1", "HTTP/2"
    request_id: str
    traceparent: str
    started: float  # time.monotonic()
    status: int = 0
    grpc: bool = False
    grpc_status: str = ""
    flags: str = "-"
    request_bytes: int = 0
    response_bytes: int = 0
    request_messages: int = 0  # gRPC messages, each way
    response_messages: int = 0


def account(
    metrics: RequestMetrics,
    done: Finished,
    *,
    source: dict[str, str],
    destination: dict[str, str],
    service: Service | None,
    upstream_host: str | None,
) -> None:
    """Count ``done`` in ``metrics`` and write its access-log line. ``source`` and
    ``destination`` are :meth:`RequestMetrics.side`'s labels."""
    shape = metrics.shape(source, destination, service, done)
    duration_ms = (time.monotonic() - done.started) * 1000
    series = shape.series
    series.record(duration_ms, done.request_bytes, done.response_bytes)
    if done.grpc:
        series.request_messages += done.request_messages
        series.response_messages += done.response_messages
    parts = done.traceparent.split("-")
    trace_id = parts[1] if len(parts) == 4 else None
    text = _json_string  # the members that are always strings, without _s's call
    members = (
        f'"method": {text(done.method)}, "authority": {text(done.authority)}, '
        f'"path": {text(done.path)}, "protocol": {text(done.protocol)}, '
        f'"response_code": {done.status:d}, "grpc_status": {_s(done.grpc_status or None)}, '
        f'"response_flags": {text(done.flags)}, "duration_ms": {round(duration_ms, 3)!r}, '
        f'"upstream_host": {_s(upstream_host)}, "bytes_received": {done.request_bytes:d}, '
        f'"bytes_sent": {done.response_bytes:d}, "request_id": {text(done.request_id)}, '
        f'"trace_id": {_s(trace_id)}, {shape.identities}'
    )
    if write_info_line(members, "request"):
        return
    log.info(
        "request",
        method=done.method,
        authority=done.authority,
        path=done.path,
        protocol=done.protocol,
        response_code=done.status,
        grpc_status=done.grpc_status or None,
        response_flags=done.flags,
        duration_ms=round(duration_ms, 3),
        upstream_host=upstream_host,
        bytes_received=done.request_bytes,
        bytes_sent=done.response_bytes,
        request_id=done.request_id,
        trace_id=trace_id,
        src_identity=source.get("source_principal"),
        dst_identity=destination.get("destination_principal"),
        dst_service=service.hostname if service else None,
    )


def _s(value: str | None) -> str:
    """``value`` as ``json.dumps`` writes it (the access line's members)."""
    return "null" if value is None else _json_string(value)


class GrpcMessages:
    """Counts the gRPC messages in one direction of a stream: each is a 5-byte prefix
    (a flag, a 4-byte length) and its bytes, however DATA frames cut them."""

    def __init__(self) -> None:
        self.count = 0
        self._prefix = bytearray()
        self._left = 0  # bytes of the current message still to come

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left:
                step = min(self._left, len(view))
                self._left -= step
                view = view[step:]
                continue
            take = min(5 - len(self._prefix), len(view))
            self._prefix += view[:take]
            view = view[take:]
            if len(self._prefix) == 5:
                self.count += 1
                self._left = int.from_bytes(self._prefix[1:5], "big")
                self._prefix.clear()
