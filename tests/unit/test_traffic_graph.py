"""mesh.traffic_graph: the graph and the waypoints' flags, from the text our own proxies'
metric classes expose (waypoint.telemetry.RequestMetrics, mesh.metrics.TcpMetrics served
by mesh.admin.metrics_route), never hand-written."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from mesh.admin import PROCESS_STARTED, metrics_route
from mesh.http import Request, Response
from mesh.metrics import TcpLabels, TcpMetrics
from mesh.traffic_graph import (
    History,
    Increase,
    edges,
    flags_by_service,
    parse_scrape,
    quantile,
)
from waypoint.telemetry import RequestLabels, RequestMetrics

SHOP = "shop"
REVIEWS = "reviews.shop.svc.cluster.local"


def request_labels(**changes: str) -> RequestLabels:
    base = {
        "source_workload": "productpage", "source_workload_namespace": SHOP,
        "destination_workload": "reviews-v1", "destination_workload_namespace": SHOP,
        "destination_service": REVIEWS, "destination_service_name": "reviews",
        "destination_service_namespace": SHOP, "response_code": "200",
    }  # fmt: skip
    return RequestLabels(**(base | changes))


def tcp_labels(reporter: str, **changes: str) -> TcpLabels:
    base = {
        "source_workload": "sleep", "source_workload_namespace": SHOP,
        "destination_workload": "db", "destination_workload_namespace": SHOP,
        "destination_service": "db.shop.svc.cluster.local", "destination_service_name": "db",
        "destination_service_namespace": SHOP, "connection_security_policy": "mutual_tls",
    }  # fmt: skip
    return TcpLabels(reporter=reporter, **(base | changes))  # type: ignore[arg-type]


class Proxy:
    """A registry with our proxies' metric classes, and its /metrics text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics(self.registry)
        self.tcp: TcpMetrics = self.requests.tcp  # a ztunnel has these four alone
        self._route = metrics_route(self.registry)

    def request(self, labels: RequestLabels, duration_ms: float, times: int = 1) -> None:
        for _ in range(times):
            self.requests.record(labels, duration_ms, 100, 200)

    def connection(self, labels: TcpLabels, sent: int = 0, received: int = 0) -> None:
        series = self.tcp.series(labels)
        series.opened.inc()
        series.closed.inc()
        series.add_bytes(sent, received)

    def text(self) -> str:
        response = self._route(Request("GET", "/metrics"))
        assert isinstance(response, Response)
        return response.body.decode()


def over(seconds: float, *proxies: tuple[str, Proxy, Proxy | None]) -> dict[str, Increase]:
    """Each proxy scraped before (its registry at that point) and after."""
    history = History()
    for name, before, after in proxies:
        history.add(name, 0.0, parse_scrape(before.text()) if after is not None else {})
    for name, before, after in proxies:
        history.add(name, seconds, parse_scrape((after or before).text()))
    return history.increases(seconds)


def test_a_waypoints_requests_make_one_edge_with_rate_success_latency_and_flags() -> None:
    waypoint = Proxy()
    waypoint.request(request_labels(), 3.0, times=50)  # in the (1, 5] bucket
    waypoint.request(request_labels(response_code="503", response_flags="FI",
                                    destination_workload="unknown"), 40.0, times=50)  # fmt: skip
    [edge] = edges(over(10.0, ("waypoint:shop/waypoint@a", Proxy(), waypoint)))
    assert edge["source"] == {"namespace": SHOP, "workload": "productpage"}
    assert edge["destination"] == REVIEWS
    assert edge["destination_workloads"] == ["shop/reviews-v1"]
    assert (edge["protocol"], edge["reporter"]) == ("http", "waypoint")
    assert edge["requests"] == 100
    assert edge["per_second"] == 10.0
    assert edge["success_rate"] == 0.5
    assert edge["response_flags"] == {"FI": 50}
    assert edge["mtls"] is True
    assert edge["denied"] == 0
    # Half are at most 5 ms, half in (25, 50]: the median is at the top of the first half's
    # bucket, p99 near the top of the slow half's.
    assert edge["p50_ms"] == 5.0
    assert 49.0 <= edge["p99_ms"] <= 50.0


def test_only_what_was_counted_in_the_window_counts() -> None:
    history = History(keep=600)
    proxy = Proxy()
    proxy.request(request_labels(), 1.0, times=1000)  # long before
    history.add("w", 0.0, parse_scrape(proxy.text()))
    history.add("w", 50.0, parse_scrape(proxy.text()))
    proxy.request(request_labels(), 1.0, times=30)
    history.add("w", 60.0, parse_scrape(proxy.text()))
    [edge] = edges(history.increases(10.0))
    assert (edge["requests"], edge["per_second"]) == (30, 3.0)
    [edge] = edges(history.increases(60.0))
    assert (edge["requests"], edge["seconds"]) == (30, 60.0)


def test_a_restarted_proxys_counters_count_from_zero() -> None:
    before, after = Proxy(), Proxy()
    before.request(request_labels(), 1.0, times=500)
    after.request(request_labels(), 1.0, times=7)  # a new process: counters went down
    [edge] = edges(over(5.0, ("w", before, after)))
    assert edge["requests"] == 7


def test_what_was_counted_before_a_restart_in_the_window_is_kept() -> None:
    """Scrape by scrape, as Prometheus's increase: 30 counted, the proxy restarts (its
    counter back to 0, then a series that had not appeared since), 7 more: 37, not 7 (a
    waypoint restart had made the last five minutes' local replies vanish)."""
    history = History()
    first, second, restarted, later = Proxy(), Proxy(), Proxy(), Proxy()
    first.request(request_labels(), 1.0, times=10)
    second.request(request_labels(), 1.0, times=40)
    later.request(request_labels(), 1.0, times=7)
    for at, proxy in ((0.0, first), (5.0, second), (10.0, restarted), (15.0, later)):
        history.add("w", at, parse_scrape(proxy.text()))
    [edge] = edges(history.increases(300.0))
    assert edge["requests"] == 37
    [edge] = edges(history.increases(7.0))  # from the scrape at 5 s: the restart and after
    assert edge["requests"] == 7


def test_a_connection_reported_by_both_ztunnels_counts_once_as_the_destination_says() -> None:
    source, destination = Proxy(), Proxy()
    for _ in range(4):
        source.connection(tcp_labels("source"), sent=900, received=100)
        destination.connection(tcp_labels("destination"), sent=1000, received=100)
    [edge] = edges(over(2.0, ("ztunnel:a@1", Proxy(), source),
                        ("ztunnel:b@2", Proxy(), destination)))  # fmt: skip
    assert (edge["reporter"], edge["protocol"]) == ("destination", "tcp")
    assert edge["connections"] == 4
    assert edge["per_second"] == 2.0
    assert (edge["bytes_sent"], edge["bytes_received"]) == (4000, 400)
    assert edge["success_rate"] == 1.0
    assert edge["mtls"] is True


def test_denied_traffic_is_counted_as_denied() -> None:
    ztunnel, waypoint = Proxy(), Proxy()
    ztunnel.connection(tcp_labels("destination", response_flags="DENY"))
    ztunnel.connection(tcp_labels("destination"))
    # An AuthorizationPolicy's 403 at the waypoint: no endpoint answered, no flag.
    waypoint.request(request_labels(response_code="403", destination_workload="unknown"), 1.0)
    # The app's own 403 is an answer, not a denial.
    waypoint.request(request_labels(response_code="403"), 1.0)
    tcp, http = sorted(
        edges(over(1.0, ("z", Proxy(), ztunnel), ("w", Proxy(), waypoint))),
        key=lambda e: e["protocol"] != "tcp",
    )
    assert (tcp["denied"], tcp["connections"], tcp["success_rate"]) == (1, 2, 0.5)
    assert tcp["response_flags"] == {"DENY": 1}
    assert (http["denied"], http["requests"], http["success_rate"]) == (1, 2, 1.0)


def test_plaintext_traffic_is_not_mtls_and_an_unknown_service_is_its_workload() -> None:
    ztunnel = Proxy()
    ztunnel.connection(tcp_labels("destination", connection_security_policy="none",
                                  destination_service="unknown"))  # fmt: skip
    [edge] = edges(over(1.0, ("z", Proxy(), ztunnel)))
    assert edge["mtls"] is False
    assert edge["destination"] == "shop/db"


def test_a_proxy_scraped_once_has_no_increase_yet() -> None:
    history = History()
    history.add("w", 0.0, parse_scrape(Proxy().text()))
    assert history.increases(60.0) == {}


def test_old_scrapes_and_silent_proxies_are_forgotten() -> None:
    history = History(keep=60.0)
    for t in range(0, 200, 5):
        history.add("w", float(t), {})
    history.add("gone", 0.0, {})
    history.expire(195.0)
    assert history.proxies() == ["w"]
    assert history.increases(600.0)["w"].seconds == 60.0  # its oldest kept is the base


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {}, None),
        (0.5, {1.0: 0, float("inf"): 0}, None),
        (0.5, {10.0: 10, 20.0: 10, float("inf"): 10}, 5.0),
        (0.99, {10.0: 0, 20.0: 100, float("inf"): 100}, 19.9),
        (0.5, {10.0: 0, float("inf"): 4}, 10.0),  # in +Inf: the highest finite bound
    ],
)
def test_quantiles_as_histogram_quantile(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    found = quantile(q, buckets)
    assert found == pytest.approx(expected) if expected is not None else found is None


def test_flags_by_service_are_the_waypoints_flagged_requests() -> None:
    waypoint, ztunnel = Proxy(), Proxy()
    waypoint.request(request_labels(response_code="503", response_flags="UO"), 1.0, times=80)
    waypoint.request(request_labels(response_code="503", response_flags="URX"), 1.0, times=3)
    waypoint.request(request_labels(), 1.0, times=500)
    ztunnel.connection(tcp_labels("destination", response_flags="DENY"))
    increases = over(300.0, ("waypoint:shop/waypoint@a", Proxy(), waypoint),
                     ("ztunnel:n@b", Proxy(), ztunnel))  # fmt: skip
    found = flags_by_service(increases)
    assert list(found) == [(SHOP, "reviews")]
    assert dict(found[(SHOP, "reviews")].flags) == {"UO": 80, "URX": 3}
    assert found[(SHOP, "reviews")].waypoints == ("waypoint:shop/waypoint@a",)
    assert flags_by_service(increases, waypoints=["other"]) == {}


def test_text_that_is_not_prometheus_is_refused() -> None:
    with pytest.raises(ValueError, match="could not convert"):
        parse_scrape("istio_requests_total{reporter=\n")


def test_ten_minutes_of_scrapes_are_thinned_and_every_window_still_counts_right() -> None:
    """Scraped every 5 s for 10 minutes at 2 requests a second: about 30 scrapes are kept
    (every one of the last minute, then one per 30 s), and the last 10 s, minute and five
    minutes count what was sent in them."""
    history = History(keep=600.0)
    proxy = Proxy()
    for tick in range(121):
        if tick:
            proxy.request(request_labels(), 1.0, times=10)  # 10 per 5 s
        history.add("w", tick * 5.0, parse_scrape(proxy.text()))
    kept = history._scrapes["w"]
    assert len(kept) <= 34
    for window, expected in ((10.0, 20), (60.0, 120), (300.0, 600)):
        [edge] = edges(history.increases(window))
        assert edge["requests"] == expected, window
        assert edge["per_second"] == 2.0


def test_message_series_are_for_grpc_alone() -> None:
    """As Istio's: ``istio_request_messages_total`` and ``istio_response_messages_total``
    for gRPC calls, no zero series beside each HTTP request's."""
    proxy = Proxy()
    proxy.request(request_labels(), 1.0, times=3)
    grpc = request_labels(request_protocol="grpc", grpc_response_status="0")
    proxy.request(grpc, 1.0)
    proxy.requests.messages(grpc, 1, 5)
    text = proxy.text()
    names = ("istio_request_messages", "istio_response_messages")
    messages = [line for line in text.splitlines() if line.startswith(names)]
    assert messages
    assert all('request_protocol="grpc"' in line for line in messages), messages
    assert any(line.endswith(" 5.0") for line in messages)


def test_a_proxy_first_seen_in_the_window_counts_what_it_did_before_if_it_began_in_it() -> None:
    """A new waypoint's first requests, before the observer first scraped it: counted when
    its process started inside the window (``process_start_time_seconds``), not when it
    started before (a proxy that was there all along and only now reachable)."""
    proxy = Proxy()
    proxy.request(request_labels(), 1.0, times=30)
    first = parse_scrape(proxy.text())
    proxy.request(request_labels(), 1.0, times=5)
    second = parse_scrape(proxy.text())
    fresh = History()  # first scraped 10 s after this process started
    fresh.add("w", 100.0, first, wall=PROCESS_STARTED + 10)
    fresh.add("w", 105.0, second, wall=PROCESS_STARTED + 15)
    [edge] = edges(fresh.increases(300.0))
    assert edge["requests"] == 35
    old = History()  # first scraped 1,000 s after it started: its past is not the window's
    old.add("w", 100.0, first, wall=PROCESS_STARTED + 1000)
    old.add("w", 105.0, second, wall=PROCESS_STARTED + 1005)
    [edge] = edges(old.increases(300.0))
    assert edge["requests"] == 5
