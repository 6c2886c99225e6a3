"""Golden metrics over time, per node of the traffic graph; sans-IO.

:func:`steps` cuts a :class:`mesh.traffic_graph.History` into spans of ``step`` seconds
(what each proxy counted between consecutive scrapes, put in the span where the later
scrape fell); :func:`golden` reduces one span's increases to what a dashboard plots per
node (requests or connections per second, success rate, p50/p99), with the graph's own
rules (:func:`mesh.traffic_graph.edges`: one reporter per edge, Prometheus's quantiles):

- into a **Service** (its hostname): everything sent to it, whoever sent it;
- into a **workload** (``namespace/name``): everything its pods received;
- out of a **workload** (``namespace/name``): everything it sent, wherever to.

Each is the graph of the same increases with the other end's labels collapsed into one,
so a node's numbers are computed as an edge's are, never summed from rounded edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from mesh.traffic_graph import UNKNOWN, Counts, History, Increase, Scrape, edges

ANY: Final = "*"  # a collapsed end


def steps(history: History, step: float, count: int) -> list[tuple[float, dict[str, Increase]]]:
    """The last ``count`` spans of ``step`` seconds, oldest first: each span's end as
    seconds before the newest scrape (0 for the last, negative before), and per proxy
    what it counted in it (several of its intervals in one span added up)."""
    newest = max((ring[-1][0] for ring in history.rings().values() if ring), default=None)
    if newest is None or step <= 0 or count <= 0:
        return []
    spans: list[dict[str, tuple[float, Scrape]]] = [{} for _ in range(count)]
    for proxy, ring in history.rings().items():
        for (before, old), (at, new) in zip(ring, list(ring)[1:], strict=False):
            back = int((newest - at) // step)  # 0: the newest span
            if back >= count:
                continue
            span = spans[count - 1 - back]
            seconds, summed = span.get(proxy, (0.0, {}))
            for key, counts in new.items():
                inc = counts.increase_since(old.get(key))
                found = summed.get(key)
                if found is None:
                    summed[key] = inc
                else:
                    found.add(inc)
            span[proxy] = (seconds + (at - before), summed)
    out = []
    for i, span in enumerate(spans):
        end = -step * (count - 1 - i)
        out.append((end, {p: Increase(s, series) for p, (s, series) in span.items()}))
    return out


def _collapsed(increases: Mapping[str, Increase], end: str) -> dict[str, Increase]:
    """The same increases with one end of every series made one: ``source`` (every
    sender alike), ``service`` (sources and Services alike: into workloads) or
    ``destination`` (every receiver alike)."""
    out = {}
    for proxy, inc in increases.items():
        series: Scrape = {}
        for key, counts in inc.series.items():
            if end == "source" or end == "service":
                key = replace(key, source_workload=ANY, source_workload_namespace=ANY)
            if end == "service":
                key = replace(key, destination_service=UNKNOWN)
            if end == "destination":  # the workload kept: a local reply's is "unknown"
                key = replace(key, destination_service=ANY)
            found = series.get(key)
            if found is None:
                series[key] = found = Counts()
            found.add(counts)
        out[proxy] = Increase(inc.seconds, series)
    return out


def _point(edge: dict[str, Any]) -> dict[str, Any]:
    return {
        "protocol": edge["protocol"],
        "per_second": edge["per_second"],
        "success_rate": edge["success_rate"],
        "p50_ms": edge.get("p50_ms"),
        "p99_ms": edge.get("p99_ms"),
        "denied": edge["denied"],
    }


def golden(increases: Mapping[str, Increase]) -> dict[str, dict[str, dict[str, Any]]]:
    """One span's golden metrics per node and protocol: ``{"in:HOSTNAME" | "in:NS/NAME" |
    "out:NS/NAME": {"http" | "tcp": point}}``, a point being ``per_second``,
    ``success_rate``, ``p50_ms``/``p99_ms`` (HTTP) and ``denied``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for edge in edges(_collapsed(increases, "source")):
        if "/" not in edge["destination"]:  # a Service's hostname
            out.setdefault(f"in:{edge['destination']}", {})[edge["protocol"]] = _point(edge)
    for edge in edges(_collapsed(increases, "service")):
        if edge["destination"] != f"{UNKNOWN}/{UNKNOWN}":
            out.setdefault(f"in:{edge['destination']}", {})[edge["protocol"]] = _point(edge)
    for edge in edges(_collapsed(increases, "destination")):
        source = edge["source"]
        if source["workload"] != UNKNOWN:
            name = f"out:{source['namespace']}/{source['workload']}"
            out.setdefault(name, {})[edge["protocol"]] = _point(edge)
    return out


def series(history: History, step: float, count: int) -> dict[str, Any]:
    """The golden metrics of every node over the last ``count`` spans of ``step`` seconds:
    ``{"ends": [seconds...], "nodes": {name: {protocol: [point or None, ...]}}}``."""
    spans = steps(history, step, count)
    nodes: dict[str, dict[str, list[dict[str, Any] | None]]] = {}
    for i, (_, increases) in enumerate(spans):
        for name, by_protocol in golden(increases).items():
            for protocol, point in by_protocol.items():
                line = nodes.setdefault(name, {}).setdefault(protocol, [None] * len(spans))
                line[i] = point
    return {"ends": [end for end, _ in spans], "nodes": nodes}
