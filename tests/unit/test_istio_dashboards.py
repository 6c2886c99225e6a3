"""Istio's Service and Workload dashboards read our metrics: every metric name their
queries use exists in what ambit exports, with every label name they use, and the label
values they filter on are values ambit produces (:mod:`tests.istio_dashboards` lists
them). The waypoint's request metrics carry ``reporter="waypoint"``, as Istio's waypoint
does, and those dashboards look only at ``source`` and ``destination``: that gap is
marked ``xfail`` (strict) until Istio's dashboards or ambit's reporter change."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from prometheus_client import CollectorRegistry

from mesh.metrics import TcpLabels, TcpMetrics
from tests.builders import service, workload
from tests.istio_dashboards import (
    MUTUAL_TLS,
    NEEDS,
    REPORTERS,
    SERVER_ERROR,
    SPIFFE_PRINCIPAL,
    Need,
)
from waypoint.telemetry import RequestLabels, RequestMetrics, service_labels, side

CLIENT = workload("client", "shop", ip="10.0.0.2")
SERVER = workload("web", "shop", ip="10.0.0.1")
WEB = service("web", "shop", backends=[SERVER])
GAP = (
    "Istio's dashboards pick reporter from source and destination only; a waypoint reports"
    " reporter=waypoint, as Istio's does (istio/istio#61815)"
)

Samples = dict[str, list[dict[str, str]]]


def exported() -> dict[str, Samples]:
    """What each proxy exports after one request (waypoint) and one connection each way
    (ztunnel), in separate registries as in separate processes: sample name -> the label
    sets of its samples."""
    waypoint, ztunnel = CollectorRegistry(), CollectorRegistry()
    requests = RequestMetrics(waypoint)
    for code in ("200", "503"):
        labels = RequestLabels(
            **side("source", CLIENT, CLIENT.identity),
            **side("destination", SERVER, SERVER.identity),
            **service_labels(WEB),
            response_code=code,
        )
        requests.record(labels, 12.5, 300, 4000)
    tcp = TcpMetrics(ztunnel)
    for reporter in ("source", "destination"):
        series = tcp.series(
            TcpLabels.of(
                reporter, source=CLIENT, source_identity=CLIENT.identity, destination=SERVER,
                service=WEB, security_policy="mutual_tls",
            )
        )  # fmt: skip
        series.opened.inc()
        series.add_bytes(100, 200)
    out: dict[str, Samples] = {}
    for name, registry in (("waypoint", waypoint), ("ztunnel", ztunnel)):
        samples: Samples = defaultdict(list)
        for family in registry.collect():
            for sample in family.samples:
                samples[sample.name].append(dict(sample.labels))
        out[name] = samples
    return out


def everything() -> Samples:
    merged: Samples = defaultdict(list)
    for samples in exported().values():
        for name, label_sets in samples.items():
            merged[name] += label_sets
    return merged


@pytest.mark.parametrize("need", NEEDS, ids=lambda n: n.names[0])
def test_every_metric_the_dashboards_query_exists_with_every_label_they_use(need: Need) -> None:
    samples = everything()
    found = [n for n in need.names if n in samples]
    assert found, f"none of {need.names} is exported"
    have = set().union(*(s.keys() for s in samples[found[0]]))
    missing = set(need.labels) - have
    assert not missing, f"{found[0]} lacks labels {sorted(missing)}"


def reporters(proxy: str, sample: str) -> set[str]:
    return {labels["reporter"] for labels in exported()[proxy][sample]}


@pytest.mark.parametrize(
    ("proxy", "sample"),
    [
        ("ztunnel", "istio_tcp_sent_bytes_total"),
        ("ztunnel", "istio_tcp_received_bytes_total"),
        *(
            pytest.param("waypoint", name, marks=pytest.mark.xfail(strict=True, reason=GAP))
            for name in (
                "istio_requests_total",
                "istio_request_duration_milliseconds_bucket",
                "istio_request_bytes_bucket",
                "istio_response_bytes_bucket",
            )
        ),
    ],
)
def test_the_reporters_the_dashboards_filter_on_are_reporters_ambit_uses(
    proxy: str, sample: str
) -> None:
    assert reporters(proxy, sample) <= REPORTERS, f"{sample} from {proxy}"


def test_the_other_values_the_dashboards_filter_on_are_values_ambit_produces() -> None:
    samples = everything()
    for name in ("istio_requests_total", "istio_tcp_sent_bytes_total"):
        policies = {s["connection_security_policy"] for s in samples[name]}
        assert MUTUAL_TLS in policies, name  # and ztunnel says "none" for plaintext
    codes = {s["response_code"] for s in samples["istio_requests_total"]}
    assert codes == {"200", "503"}  # three digits, so !~"5.*" leaves out exactly the 5xx
    assert {c for c in codes if re.fullmatch(SERVER_ERROR, c)} == {"503"}
    principals = {s["destination_principal"] for s in samples["istio_requests_total"]}
    assert all(re.fullmatch(SPIFFE_PRINCIPAL, p) for p in principals), principals
    assert TcpLabels("source").connection_security_policy != MUTUAL_TLS  # the != panels
    services = {s["destination_service"] for s in samples["istio_requests_total"]}
    assert services == {"web.shop.svc.cluster.local"}  # what $service lists and matches
