"""ztunnel's telemetry: Istio's TCP metrics and one access-log line per connection,
fed from :class:`~mesh.record.ConnectionRecord`.

Inbound connections report as ``reporter="destination"``, outbound as
``"source"``; bytes are from the reporter's point of view (Istio's meaning).
Byte counters of open connections are brought up to date every few seconds
(:meth:`ZtunnelTelemetry.flush_periodically`), so long connections show
traffic before they end. While somebody taps (``ambit tap``, :mod:`mesh.tap`), each
closed or denied connection is also offered to :attr:`ZtunnelTelemetry.tap`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NoReturn

import trio

from mesh.accesslog import log_connection
from mesh.metrics import SeriesCache, TcpMetrics, TcpSeries
from mesh.reason import Failure
from mesh.record import ConnectionRecord
from mesh.tap import ProxyTap, TapEvent

FLUSH_INTERVAL = 5.0


@dataclass(eq=False)
class _Live:
    series: TcpSeries
    record: ConnectionRecord
    sent: int = 0  # already counted
    received: int = 0


class ZtunnelTelemetry:
    def __init__(self, metrics: TcpMetrics) -> None:
        self._cache = SeriesCache(metrics)
        self._live: dict[int, _Live] = {}
        self.tap = ProxyTap()  # served over the config stream (ConfigClient's tap)

    def _series(self, record: ConnectionRecord, flags: str = "-") -> TcpSeries:
        return self._cache.get(
            "destination" if record.direction == "inbound" else "source",
            source=record.src_workload,
            source_identity=record.src_identity,
            destination=record.dst_workload,
            service=record.dst_service,
            security_policy="mutual_tls" if record.mtls else "none",
            response_flags=flags,
        )

    @staticmethod
    def _bytes(record: ConnectionRecord) -> tuple[int, int]:
        """(sent, received) as the reporter sees them."""
        stats = record.stats
        if record.direction == "inbound":  # relay(peer, app): sent = peer -> app
            return stats.received, stats.sent
        return stats.sent, stats.received  # relay(client, upstream)

    def opened(self, record: ConnectionRecord) -> None:
        series = self._series(record)
        series.opened.inc()
        self._live[id(record)] = _Live(series, record)

    def _flush(self, live: _Live) -> None:
        sent, received = self._bytes(live.record)
        live.series.add_bytes(sent - live.sent, received - live.received)
        live.sent, live.received = sent, received

    def closed(
        self, record: ConnectionRecord, failure: Failure | None, *, log: bool = True
    ) -> None:
        live = self._live.pop(id(record), None)
        if live is not None:
            self._flush(live)
            live.series.closed.inc()
        if log or self.tap.active:
            sent, received = self._bytes(record)
            if log:
                self._log(record, sent, received, failure, denied=False)
            if self.tap.active:
                self.tap.offer(tap_event(record, sent, received, failure))

    def denied(self, record: ConnectionRecord, failure: Failure, *, log: bool = True) -> None:
        """A connection refused before it opened: counted with the reason's Istio flag."""
        series = self._series(record, failure.reason.flag)
        series.opened.inc()
        series.closed.inc()
        if log:
            self._log(record, 0, 0, failure, denied=True)
        if self.tap.active:
            self.tap.offer(tap_event(record, 0, 0, failure, flag=failure.reason.flag))

    def _log(
        self,
        record: ConnectionRecord,
        sent: int,
        received: int,
        failure: Failure | None,
        *,
        denied: bool,
    ) -> None:
        log_connection(
            direction=record.direction,
            src_addr=f"{record.src_addr[0]}:{record.src_addr[1]}",
            dst_addr=f"{record.dst_addr[0]}:{record.dst_addr[1]}",
            src_workload=record.src_workload,
            src_identity=record.src_identity,
            dst_workload=record.dst_workload,
            dst_service=record.dst_service,
            dst_identity=record.dst_workload.identity
            if record.dst_workload and record.mtls
            else None,
            bytes_sent=sent,
            bytes_recv=received,
            duration_ms=(time.monotonic() - record.started) * 1000,
            denied=denied,
            failure=failure,
        )

    async def flush_periodically(self, interval: float = FLUSH_INTERVAL) -> NoReturn:
        while True:
            await trio.sleep(interval)
            for live in list(self._live.values()):
                self._flush(live)


def tap_event(
    record: ConnectionRecord, sent: int, received: int, failure: Failure | None, flag: str = "-"
) -> TapEvent:
    """``record`` as ``ambit tap`` shows it: who to whom, bytes, duration, and why it ended
    (``reason``) when it failed or was denied (``flag``: ``DENY`` or ``CONNECT``)."""
    src, dst, service = record.src_workload, record.dst_workload, record.dst_service
    dst_identity = dst.identity if dst is not None and record.mtls else None
    return TapEvent(
        "tcp", "ztunnel", time.time(), (time.monotonic() - record.started) * 1000,
        src_identity=record.src_identity,
        src_workload=f"{src.namespace}/{src.name}" if src else None,
        src_namespace=src.namespace if src else None,
        src_addr=f"{record.src_addr[0]}:{record.src_addr[1]}",
        dst_identity=dst_identity,
        dst_workload=f"{dst.namespace}/{dst.name}" if dst else None,
        dst_namespace=dst.namespace if dst else service.namespace if service else None,
        dst_service=f"{service.namespace}/{service.name}" if service else None,
        dst_addr=f"{record.dst_addr[0]}:{record.dst_addr[1]}",
        direction=record.direction, flags=flag,
        reason=failure.reason.value if failure is not None else None,
        bytes_sent=sent, bytes_received=received,
    )  # fmt: skip
