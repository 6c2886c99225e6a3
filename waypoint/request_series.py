"""The numbers behind the waypoint's Istio request series, kept as plain Python numbers and
turned into Prometheus samples only when scraped.

prometheus_client's labelled children take a lock for every increment and find a
histogram's bucket by walking its bounds in Python: a request's counter and three
histograms cost about 4 µs that way. Here a request adds to one :class:`Series`
(found once per label set, see :class:`waypoint.telemetry.RequestMetrics`) with
:func:`bisect.bisect_left` over the bounds; :class:`RequestSeries`, registered as a
collector, renders the same names, labels, buckets and ``_sum``/``_count`` samples at
scrape time. The waypoint is one thread: the numbers need no lock (a scrape runs on
the same Trio loop).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Final, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

_le = cast(Callable[[float], str], floatToGoString)  # how prometheus_client writes ``le``


class Histogram:
    """One histogram series: its sum and the count of each bucket (not cumulative; the
    last is ``+Inf``)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound

    def cumulative(self, names: Sequence[str]) -> list[tuple[str, float]]:
        out, total = [], 0
        for name, count in zip(names, self.counts, strict=True):
            total += count
            out.append((name, float(total)))
        return out


class Series:
    """What one label set of the request series holds."""

    __slots__ = ("duration", "grpc", "request_bytes", "request_messages", "requests",
                 "response_bytes", "response_messages")  # fmt: skip

    def __init__(self, duration: tuple[float, ...], sizes: tuple[float, ...], grpc: bool) -> None:
        self.grpc = grpc  # Istio has message series for gRPC alone
        self.requests = 0
        self.duration = Histogram(duration)
        self.request_bytes = Histogram(sizes)
        self.response_bytes = Histogram(sizes)
        self.request_messages = 0
        self.response_messages = 0

    def record(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        self.requests += 1
        self.duration.observe(duration_ms)
        self.request_bytes.observe(request_bytes)
        self.response_bytes.observe(response_bytes)


COUNTERS: Final = (
    ("istio_requests", "Requests handled by the waypoint"),
    ("istio_request_messages", "gRPC messages sent by clients"),
    ("istio_response_messages", "gRPC messages sent back to clients"),
)
HISTOGRAMS: Final = (
    ("istio_request_duration_milliseconds",
     "Request duration, first request byte to last response byte (ms)"),
    ("istio_request_bytes", "Request sizes (headers and body)"),
    ("istio_response_bytes", "Response sizes (headers and body)"),
)  # fmt: skip


class RequestSeries:
    """Every label set's :class:`Series`, by label values, as a Prometheus collector of
    :data:`COUNTERS` and :data:`HISTOGRAMS` over ``label_names``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        label_names: tuple[str, ...],
        duration_buckets: tuple[float, ...],
        size_buckets: tuple[float, ...],
    ) -> None:
        self._label_names = label_names
        self._duration = tuple(float(b) for b in duration_buckets)
        self._sizes = tuple(float(b) for b in size_buckets)
        self._duration_le = [*(_le(b) for b in self._duration), "+Inf"]
        self._sizes_le = [*(_le(b) for b in self._sizes), "+Inf"]
        self._series: dict[tuple[str, ...], Series] = {}
        registry.register(self)

    def of(self, values: tuple[str, ...], *, grpc: bool) -> Series:
        """The series of ``values`` (the label values, in ``label_names``' order)."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = Series(self._duration, self._sizes, grpc)
        return series

    def describe(self) -> Iterator[Metric]:
        """The families' names, for the registry's duplicate check (no samples)."""
        for name, doc in COUNTERS:
            yield CounterMetricFamily(name, doc, labels=self._label_names)
        for name, doc in HISTOGRAMS:
            yield HistogramMetricFamily(name, doc, labels=self._label_names)

    def collect(self) -> Iterator[Metric]:
        names = self._label_names
        requests, request_messages, response_messages = (
            CounterMetricFamily(name, doc, labels=names) for name, doc in COUNTERS
        )
        duration, request_bytes, response_bytes = (
            HistogramMetricFamily(name, doc, labels=names) for name, doc in HISTOGRAMS
        )
        for values, s in list(self._series.items()):
            labels = list(values)
            requests.add_metric(labels, s.requests)
            for family, histogram, le in (
                (duration, s.duration, self._duration_le),
                (request_bytes, s.request_bytes, self._sizes_le),
                (response_bytes, s.response_bytes, self._sizes_le),
            ):
                family.add_metric(labels, histogram.cumulative(le), histogram.sum)
            if s.grpc:
                request_messages.add_metric(labels, s.request_messages)
                response_messages.add_metric(labels, s.response_messages)
        yield from (requests, duration, request_bytes, response_bytes, request_messages,
                    response_messages)  # fmt: skip
