"""mesh.traffic_series: a node's golden metrics over time, from the text our own proxies'
metric classes expose (as tests/unit/test_traffic_graph.py does)."""

from __future__ import annotations

import pytest

from mesh.traffic_graph import History, parse_scrape
from mesh.traffic_series import Plots, golden, series, steps
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
    assert [k for k, _ in spans] == [0, 1, 2, 3]
    assert spans[0][1] == {}  # before the first scrape
    plotted = series(history, 5.0, 4)
    assert plotted["ends"] == [-15.0, -10.0, -5.0, 0.0]
    [line] = plotted["nodes"][f"in:{REVIEWS}"].values()
    assert line["per_second"] == [None, 10.0, None, 10.0]  # None: counted nothing
    assert line["success_rate"] == [None, 1.0, None, 0.8]
    assert line["p50_ms"][3] == pytest.approx(10.0, rel=0.5)
    # The same numbers into the workload, and out of the sender.
    assert plotted["nodes"][f"in:{SHOP}/reviews-v1"]["http"]["per_second"][3] == 10.0
    assert plotted["nodes"][f"out:{SHOP}/productpage"]["http"]["per_second"][3] == 10.0


def test_two_scrapes_in_one_span_add_up() -> None:
    proxy, history = Proxy(), History()
    scraped(proxy, history, 0.0)
    for at in (5.0, 10.0):
        proxy.request(request_labels(), 5.0, times=20)
        scraped(proxy, history, at)
    [(k, increases)] = steps(history, 10.0, 1)
    assert k == 1  # (0, 10]
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


def test_remembered_spans_give_what_computing_them_again_gives() -> None:
    """Plots keeps settled spans across rounds: each round it says what a fresh
    computation says, scrapes 5 s apart at an offset, spans of 10 s, the plot sliding."""
    proxy, history, plots = Proxy(), History(), Plots(step=10.0, count=3)
    for round_ in range(12):
        proxy.request(request_labels(), 3.0, times=round_ + 1)
        scraped(proxy, history, 2.5 + 5.0 * round_)
        assert plots.series(history) == series(history, 10.0, 3), round_
    rates = plots.series(history)["nodes"][f"in:{REVIEWS}"]["http"]["per_second"]
    # (30, 40], (40, 50], (50, 60]: the scrapes at 32.5 and 37.5 closed 7 and 8 requests...
    assert rates == [(7 + 8) / 10, (9 + 10) / 10, (11 + 12) / 10]


def test_nothing_scraped_is_no_span() -> None:
    assert steps(History(), 5.0, 10) == []
    assert series(History(), 5.0, 10) == {"ends": [], "nodes": {}}
