"""k8s.dashboard_model: the page's document from a snapshot and the graph and series our
own proxies' metrics give (through mesh.traffic_graph and mesh.traffic_series)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from k8s.dashboard_model import page_model, service_id, workload_id
from mesh.model_l7 import HttpRoute, ParentRef
from mesh.traffic_graph import History, edges, parse_scrape
from mesh.traffic_series import series
from tests.builders import (
    deny,
    op,
    peer_auth,
    rule,
    service,
    snapshot,
    source,
    waypoint_ref,
    workload,
)
from tests.unit.test_traffic_graph import Proxy, request_labels, tcp_labels

SHOP = "shop"


def mesh_of_shop() -> Any:
    page = workload("productpage", SHOP, ip="10.0.0.1", labels={"app": "productpage"})
    pods = [
        workload(f"reviews-v1-7d4b9c-{s}", SHOP, ip=f"10.0.0.{i}", sa="reviews",
                 labels={"app": "reviews", "pod-template-hash": "7d4b9c"}, waypoint=None)
        for i, s in ((2, "a1b2c"), (3, "x9y8z"))
    ]  # fmt: skip
    reviews = replace(service("reviews", SHOP, backends=pods), waypoint="shop/waypoint")
    db = workload("db", SHOP, ip="10.0.0.4", named_ports={"pg": 5432})
    l4 = deny("no-intruder", rule([source(principals=["cluster.local/ns/shop/sa/intruder"])]),
              namespace=SHOP, selector={"app": "reviews"})  # fmt: skip
    bound = deny(
        "no-delete",
        rule(operations=[op(methods=["DELETE"])]),
        namespace=SHOP,
        targets=[waypoint_ref("waypoint")],
    )
    route = HttpRoute("reviews", SHOP, (ParentRef("", "Service", "reviews", port=80),))
    strict = peer_auth("strict", "STRICT", namespace=SHOP)
    return snapshot(page, *pods, db, reviews, l4, bound, route, strict, version=7)


def traffic() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two scrapes 10 s apart: 20 requests/s to reviews through the waypoint, 5 of every
    10 refused with 403; a plaintext client's connection to db, and a denied one."""
    waypoint, ztunnel, history = Proxy(), Proxy(), History()
    history.add("waypoint:shop/waypoint", 0.0, parse_scrape(waypoint.text()))
    history.add("ztunnel:node-1", 0.0, parse_scrape(ztunnel.text()))
    waypoint.request(request_labels(destination_workload="reviews-v1"), 4.0, times=100)
    denied = request_labels(response_code="403", destination_workload="unknown",
                            destination_workload_namespace="unknown")  # fmt: skip
    waypoint.request(denied, 1.0, times=100)
    ztunnel.connection(tcp_labels("destination", source_workload="unknown",
                                  source_workload_namespace="unknown",
                                  destination_service="unknown"), sent=10)  # fmt: skip
    history.add("waypoint:shop/waypoint", 10.0, parse_scrape(waypoint.text()))
    history.add("ztunnel:node-1", 10.0, parse_scrape(ztunnel.text()))
    graph = {"window_seconds": 60, "proxies": [], "edges": edges(history.increases(60))}
    return graph, series(history, 10.0, 3)


def test_nodes_are_the_snapshots_workloads_and_services() -> None:
    model = page_model(mesh_of_shop(), {"edges": []}, {})
    ids = {n["id"]: n for n in model["nodes"]}
    assert model["version"] == 7
    reviews_wl = ids[workload_id(SHOP, "reviews-v1")]  # a Deployment's two pods: one node
    assert reviews_wl["pods"] == ["reviews-v1-7d4b9c-a1b2c", "reviews-v1-7d4b9c-x9y8z"]
    assert reviews_wl["identities"] == ["spiffe://cluster.local/ns/shop/sa/reviews"]
    assert [(p["kind"], p["key"]) for p in reviews_wl["policies"]] == [
        ("AuthorizationPolicy", "shop/no-intruder"),
        ("PeerAuthentication", "shop/strict"),
    ]
    [l4] = [p for p in reviews_wl["policies"] if p["kind"] == "AuthorizationPolicy"]
    assert l4["action"] == "DENY"
    assert l4["rules"] == ["from principals ['cluster.local/ns/shop/sa/intruder']"]
    assert l4["enforced_by"] == "ztunnel on node node-1"
    page = ids[workload_id(SHOP, "productpage")]
    assert [p["kind"] for p in page["policies"]] == ["PeerAuthentication"]
    svc = ids[service_id(SHOP, "reviews")]
    assert svc["hostname"] == "reviews.shop.svc.cluster.local"
    assert svc["backends"] == [workload_id(SHOP, "reviews-v1")]
    assert [(r["kind"], r["key"], r["ports"]) for r in svc["routes"]] == [
        ("HTTPRoute", "shop/reviews", [80])
    ]
    [bound] = svc["policies"]
    assert (bound["key"], bound["enforced_by"]) == ("shop/no-delete", "waypoint shop/waypoint")
    assert bound["rules"] == ["to methods ['DELETE']"]


def test_edges_join_the_nodes_with_their_numbers_and_why() -> None:
    graph, plotted = traffic()
    model = page_model(mesh_of_shop(), graph, plotted)
    by_id = {e["id"]: e for e in model["edges"]}
    http = by_id[f"{workload_id(SHOP, 'productpage')}->{service_id(SHOP, 'reviews')}:http"]
    assert http["per_second"] == 20.0
    assert http["success_rate"] == 1.0  # a 403 is not a 5xx
    assert http["denied"] is True
    assert http["denied_count"] == 100
    assert http["p50_ms"] is not None
    assert http["why"] == {"from": "shop/productpage", "to": "shop/reviews"}
    external = by_id[f"external:unknown->{workload_id(SHOP, 'db')}:tcp"]
    assert external["denied"] is False
    assert external["why"] is None  # no pod to ask from
    kinds = {n["id"]: n["kind"] for n in model["nodes"]}
    assert kinds["external:unknown"] == "external"


def test_series_are_under_the_nodes_ids() -> None:
    graph, plotted = traffic()
    model = page_model(mesh_of_shop(), graph, plotted)
    assert model["series"]["ends"] == [-20.0, -10.0, 0.0]
    into = model["series"]["nodes"][service_id(SHOP, "reviews")]["in"]["http"]
    assert into["per_second"] == [None, None, 20.0]
    out = model["series"]["nodes"][workload_id(SHOP, "productpage")]["out"]["http"]
    assert out["denied"] == [None, None, 100]


def test_no_snapshot_yet_still_draws_the_traffic() -> None:
    graph, plotted = traffic()
    model = page_model(None, graph, plotted)
    assert model["version"] is None
    assert {n["kind"] for n in model["nodes"]} == {"external"}
    assert all(e["why"] is None for e in model["edges"])
