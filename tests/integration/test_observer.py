"""k8s.observer on loopback: the control plane's observer scrapes real /metrics servers
(mesh.admin serving our proxies' own metric classes), on one port at several addresses
as proxies on their own IPs; a proxy that refuses or never answers is skipped and logged
once; /debug/graph is served through the admin server; the LocalReplies condition lands
in the store."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from k8s.config_server import ProxyStatus
from k8s.local_replies import CONDITION_LOCAL_REPLIES
from k8s.manifests import read_documents
from k8s.observer import Observer, ObserverConfig, http_get
from k8s.store import ObjectStore
from mesh.admin import metrics_route, serve_http
from mesh.metrics import TcpLabels, TcpMetrics
from tests.waiting import wait_until
from waypoint.telemetry import RequestLabels, RequestMetrics

Logs = list[MutableMapping[str, Any]]
WAYPOINT, ZTUNNEL, REFUSING, SILENT = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
REVIEWS = {
    "source_workload": "productpage", "source_workload_namespace": "shop",
    "destination_service": "reviews.shop.svc.cluster.local",
    "destination_service_name": "reviews", "destination_service_namespace": "shop",
}  # fmt: skip
ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules: [{backendRefs: [{name: reviews, port: 80}]}]
"""


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def proxy(role: str, name: str, address: str, peer: str = "") -> ProxyStatus:
    node = name if role == "ztunnel" else "node-1"
    return ProxyStatus(role, name, node, True, peer, address=address)  # type: ignore[arg-type]


PROXIES = [
    proxy("waypoint", "shop", WAYPOINT, "spiffe://cluster.local/ns/shop/sa/waypoint"),
    proxy("ztunnel", "node-1", ZTUNNEL),
    proxy("ztunnel", "node-2", REFUSING),
    proxy("ztunnel", "node-3", SILENT),
    ProxyStatus("ztunnel", "node-4", "node-4", False, "", address="127.0.0.6"),  # gone
]


@asynccontextmanager
async def serving(ztunnel_age: float = 3600.0) -> AsyncIterator[tuple[int, RequestMetrics]]:
    """A waypoint's (started now) and a ztunnel's (started ``ztunnel_age`` seconds ago)
    /metrics on one port, and a listener at SILENT that takes connections and never
    answers. Yields the port and the waypoint's metrics."""
    waypoint_registry, ztunnel_registry = CollectorRegistry(), CollectorRegistry()
    waypoint = RequestMetrics(waypoint_registry)
    labels = TcpLabels("destination", connection_security_policy="mutual_tls", **REVIEWS)
    series = TcpMetrics(ztunnel_registry).series(labels)
    series.opened.inc(3)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            lambda task_status: serve_http(
                {"/metrics": metrics_route(waypoint_registry, started=time.time())},
                host=WAYPOINT, port=0, task_status=task_status,
            )
        )  # fmt: skip
        await nursery.start(
            lambda task_status: serve_http(
                {"/metrics": metrics_route(ztunnel_registry, started=time.time() - ztunnel_age)},
                host=ZTUNNEL, port=port, task_status=task_status,
            )
        )  # fmt: skip
        silent = trio.socket.socket()
        await silent.bind((SILENT, port))
        silent.listen(8)
        with silent:
            yield port, waypoint
        nursery.cancel_scope.cancel()


def record(metrics: RequestMetrics, times: int, **labels: str) -> None:
    for _ in range(times):
        metrics.record(RequestLabels(**(REVIEWS | labels)), 2.0, 10, 10)


async def test_the_observer_scrapes_each_connected_proxy_and_skips_the_silent(
    logs: Logs,
) -> None:
    with trio.fail_after(20):
        async with serving() as (port, waypoint):
            observer = Observer(
                lambda: PROXIES, ObserverConfig(port=port, timeout=0.5, interval=0.2)
            )
            await observer.scrape_round()
            record(waypoint, 6, response_code="200")
            record(waypoint, 4, response_code="503", response_flags="FI")
            await observer.scrape_round()
            await observer.scrape_round()
            graph = observer.graph(60.0)
    failing = {p["proxy"]: p["failing"] for p in graph["proxies"]}
    assert failing == {
        f"waypoint:shop/waypoint@{WAYPOINT}": None,
        f"ztunnel:node-1@{ZTUNNEL}": None,
        f"ztunnel:node-2@{REFUSING}": failing[f"ztunnel:node-2@{REFUSING}"],
        f"ztunnel:node-3@{SILENT}": "no answer within 0.5 s",
    }
    assert failing[f"ztunnel:node-2@{REFUSING}"].startswith("connect:")
    [edge] = [e for e in graph["edges"] if e["protocol"] == "http"]
    assert (edge["requests"], edge["success_rate"]) == (10, 0.6)
    assert edge["response_flags"] == {"FI": 4}
    assert edge["per_second"] > 0
    # The ztunnel's 3 connections were opened before the first scrape, by a process that
    # started an hour ago: when is unknown, none is in the window.
    assert [e for e in graph["edges"] if e["protocol"] == "tcp"] == []
    failed = [e["proxy"] for e in logs if e["event"] == "proxy_scrape_failed"]
    assert sorted(failed) == [f"ztunnel:node-2@{REFUSING}", f"ztunnel:node-3@{SILENT}"]  # once


async def test_debug_graph_and_the_local_replies_condition() -> None:
    store = ObjectStore()
    [doc] = read_documents(ROUTE, "route.yaml")
    assert doc.obj is not None
    store.put(doc.obj)
    with trio.fail_after(20):
        async with serving() as (port, waypoint), trio.open_nursery() as nursery:
            observer = Observer(lambda: PROXIES[:2], ObserverConfig(port=port, interval=0.1))
            admin = await nursery.start(
                lambda task_status: serve_http(
                    {"/debug/graph": observer.graph_route()}, host="127.0.0.1", port=0,
                    task_status=task_status,
                )
            )  # fmt: skip
            written = trio.Event()

            async def after() -> None:
                written.set()

            nursery.start_soon(lambda: observer.run(store, after=after))
            await wait_until(lambda: observer.rounds >= 1)
            record(waypoint, 5, response_code="503", response_flags="UO")
            await written.wait()
            body = await http_get("127.0.0.1", admin[1], "/debug/graph?window=30")
            with pytest.raises(Exception, match="HTTP 400"):
                await http_get("127.0.0.1", admin[1], "/debug/graph?window=9999")
            nursery.cancel_scope.cancel()
    graph = json.loads(body)
    assert graph["window_seconds"] == 30.0
    [edge] = graph["edges"]
    assert (edge["response_flags"], edge["success_rate"]) == ({"UO": 5}, 0.0)
    entry = store.get(("HTTPRoute", "shop", "reviews"))
    assert entry is not None
    condition = entry.condition(CONDITION_LOCAL_REPLIES)
    assert condition is not None
    assert condition.status == "True"
    assert condition.message == ("last 5m at waypoint shop/waypoint: 5 UO (overflow: circuit open)")


async def test_a_proxy_that_connects_later_counts_from_zero() -> None:
    """A proxy that joins while the observer runs is a new process: what it counted before
    its first scrape is in the graph."""
    connected: list[ProxyStatus] = []
    with trio.fail_after(20):
        async with serving() as (port, waypoint):
            observer = Observer(lambda: connected, ObserverConfig(port=port))
            await observer.scrape_round()  # nobody yet
            connected.append(PROXIES[0])
            record(waypoint, 7, response_code="200")  # before its first scrape
            await observer.scrape_round()
            graph = observer.graph(60.0)
    [edge] = graph["edges"]
    assert edge["requests"] == 7


async def test_a_proxy_that_started_in_the_window_counts_what_it_did_before_its_first_scrape() -> (
    None
):
    """Present at the observer's first round (no round saw it connect), but started 5 s
    ago (``process_start_time_seconds``): its 3 connections are inside a 60 s window; with
    a 2 s window they are not."""
    with trio.fail_after(20):
        async with serving(ztunnel_age=5.0) as (port, _waypoint):
            observer = Observer(lambda: PROXIES[1:2], ObserverConfig(port=port))
            await observer.scrape_round()
            await observer.scrape_round()
            wide, narrow = observer.graph(60.0), observer.graph(2.0)
    [edge] = wide["edges"]
    assert (edge["protocol"], edge["connections"]) == ("tcp", 3)
    assert narrow["edges"] == []
