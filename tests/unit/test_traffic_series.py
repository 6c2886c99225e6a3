"""mesh.traffic_series: a node's golden metrics over time, from the text our own proxies'
metric classes expose (as tests/unit/test_traffic_graph.py does)."""

from __future__ import annotations

import pytest

from mesh.traffic_graph import History, parse_scrape
from mesh.traffic_series import golden, series, steps
from tests.unit.test_traffic_graph import REVIEWS, SHOP, Proxy, request_labels, tcp_labels


def scraped(proxy: Proxy, history: History, at: float, name: str = "waypoint:shop/wp") -> None:
    history.add(name, at, parse_scrape(proxy.text()))


def test_spans_hold_what_was_counted_in_them() -> None:
    proxy, history = Proxy(), History()
    scraped(proxy, history, 0.0)
    proxy.request(request_labels(), 10.0, times=50)  # 0..5 s: 10/s
    scraped(proxy, history, 5.0)
    scraped(proxy, history, 10.0)  # 5..10 s: nothing
    proxy.request(request_labels(), 10.0, times=40)
    proxy.request(request_labels(response_code="503"), 10.0, times=10)  # 10..15 s: 10/s, 80%
    scraped(proxy, history, 15.0)

    spans = steps(history, 5.0, 4)
    assert [end for end, _ in spans] == [-15.0, -10.0, -5.0, 0.0]
    assert spans[0][1] == {}  # before the first scrape
    plotted = series(history, 5.0, 4)
    [line] = plotted["nodes"][f"in:{REVIEWS}"].values()
    assert line[0] is None
    assert line[1] is not None
    assert line[1]["per_second"] == 10.0
    assert line[1]["success_rate"] == 1.0
    assert line[2] is None  # counted nothing: no point
    assert line[3] is not None
    assert line[3]["success_rate"] == 0.8
    assert line[3]["p50_ms"] == pytest.approx(10.0, rel=0.5)
    # The same numbers into the workload, and out of the sender.
    assert plotted["nodes"][f"in:{SHOP}/reviews-v1"]["http"][3]["per_second"] == 10.0
    assert plotted["nodes"][f"out:{SHOP}/productpage"]["http"][3]["per_second"] == 10.0


def test_two_scrapes_in_one_span_add_up() -> None:
    proxy, history = Proxy(), History()
    scraped(proxy, history, 0.0)
    for at in (5.0, 10.0):
        proxy.request(request_labels(), 5.0, times=20)
        scraped(proxy, history, at)
    [(end, increases)] = steps(history, 10.0, 1)
    assert end == 0.0
    assert golden(increases)[f"in:{REVIEWS}"]["http"]["per_second"] == 4.0  # 40 in 10 s


def test_tcp_and_denied_connections_per_workload() -> None:
    ztunnel, history = Proxy(), History()
    scraped(ztunnel, history, 0.0, "ztunnel:node-2")
    ztunnel.connection(tcp_labels("destination"), sent=100, received=10)
    ztunnel.connection(tcp_labels("destination", response_flags="DENY"))
    scraped(ztunnel, history, 2.0, "ztunnel:node-2")
    point = golden(steps(history, 2.0, 1)[0][1])["in:shop/db"]["tcp"]
    assert point["per_second"] == 1.0
    assert point["denied"] == 1
    assert point["success_rate"] == 0.5
    assert point["p50_ms"] is None


def test_nothing_scraped_is_no_span() -> None:
    assert steps(History(), 5.0, 10) == []
    assert series(History(), 5.0, 10) == {"ends": [], "nodes": {}}
