"""The waypoint's request series (kept as plain numbers, rendered when scraped) read as
prometheus_client's own counters and histograms would: same sample names, labels,
buckets, sums and counts for the same requests."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from waypoint.request_series import RequestSeries
from waypoint.telemetry import DURATION_BUCKETS, LABEL_NAMES, SIZE_BUCKETS, RequestLabels

HTTP = RequestLabels(source_workload="client", response_code="200")
GRPC = RequestLabels(source_workload="client", request_protocol="grpc", response_code="200",
                     grpc_response_status="0")  # fmt: skip


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_series_scrape_as_prometheus_clients_own_metrics_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    series = RequestSeries(ours, LABEL_NAMES, DURATION_BUCKETS, SIZE_BUCKETS)
    requests = Counter("istio_requests", "x", LABEL_NAMES, registry=theirs)
    duration = Histogram("istio_request_duration_milliseconds", "x", LABEL_NAMES,
                         buckets=DURATION_BUCKETS, registry=theirs)  # fmt: skip
    sent = Histogram("istio_request_bytes", "x", LABEL_NAMES, buckets=SIZE_BUCKETS,
                     registry=theirs)  # fmt: skip
    received = Histogram("istio_response_bytes", "x", LABEL_NAMES, buckets=SIZE_BUCKETS,
                         registry=theirs)  # fmt: skip
    messages_in = Counter("istio_request_messages", "x", LABEL_NAMES, registry=theirs)
    messages_out = Counter("istio_response_messages", "x", LABEL_NAMES, registry=theirs)
    draw = random.Random(3)
    # Values on the bounds themselves land in that bucket (le means <=), as in theirs.
    edge = [0.5, 1.0, 10.0, 1000.0, 3600000.0, 1e8, 0.0]
    for i in range(500):
        labels = GRPC if i % 3 == 0 else HTTP
        ms = edge[i] if i < len(edge) else draw.expovariate(0.05)
        up, down = draw.choice([0, 10, 99, 1000, 10**9 + 1]), draw.randrange(0, 10**6)
        s = series.of(labels.values, grpc=labels.request_protocol == "grpc")
        s.record(ms, up, down)
        values = labels.values
        requests.labels(*values).inc()
        duration.labels(*values).observe(ms)
        sent.labels(*values).observe(up)
        received.labels(*values).observe(down)
        if labels is GRPC:
            s.request_messages += 2
            s.response_messages += 1
            messages_in.labels(*values).inc(2)
            messages_out.labels(*values).inc(1)
    messages_in.labels(*GRPC.values)  # theirs has no message series for plain HTTP
    got, want = samples(ours), samples(theirs)
    assert got == want
    assert got[("istio_requests_total", tuple(sorted(zip(LABEL_NAMES, HTTP.values,
                                                         strict=True))))] == 333  # fmt: skip
    assert not [k for k in got if k[0] == "istio_request_messages_total"
                and dict(k[1])["request_protocol"] == "http"]  # fmt: skip


def test_a_second_collector_of_the_same_names_is_refused() -> None:
    registry = CollectorRegistry()
    RequestSeries(registry, LABEL_NAMES, DURATION_BUCKETS, SIZE_BUCKETS)
    with pytest.raises(ValueError, match="istio_requests"):
        Counter("istio_requests", "x", LABEL_NAMES, registry=registry)
