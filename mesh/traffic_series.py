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

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any, Final

from mesh.traffic_graph import UNKNOWN, Counts, History, Increase, Scrape, SeriesKey, edges

ANY: Final = "*"  # a collapsed end


def _bucket(at: float, step: float) -> int:
    """The span a scrape at ``at`` closes: span ``k`` is ``((k - 1) * step, k * step]``."""
    return math.ceil(at / step)


def _newest(history: History) -> float | None:
    return max((ring[-1][0] for ring in history.rings().values() if ring), default=None)


def steps(
    history: History, step: float, count: int, *, only: Iterable[int] | None = None
) -> list[tuple[int, dict[str, Increase]]]:
    """The last ``count`` spans of ``step`` seconds (``((k - 1) * step, k * step]`` of the
    history's clock, the last one holding the newest scrape), oldest first: each span's
    number ``k`` and per proxy what it counted in it (its intervals between consecutive
    scrapes, each in the span where the later scrape fell, added up). With ``only``, just
    those spans."""
    newest = _newest(history)
    if newest is None or step <= 0 or count <= 0:
        return []
    last = _bucket(newest, step)
    wanted = set(range(last - count + 1, last + 1))
    if only is not None:
        wanted &= set(only)
    spans: dict[int, dict[str, tuple[float, Scrape]]] = {k: {} for k in sorted(wanted)}
    for proxy, ring in history.rings().items():
        for (before, old), (at, new) in zip(ring, list(ring)[1:], strict=False):
            span = spans.get(_bucket(at, step))
            if span is None:
                continue
            seconds, summed = span.get(proxy, (0.0, {}))
            for key, counts in new.items():
                inc = counts.increase_since(old.get(key))
                found = summed.get(key)
                if found is None:
                    summed[key] = inc
                else:
                    found.add(inc)
            span[proxy] = (seconds + (at - before), summed)
    return [
        (k, {p: Increase(s, series) for p, (s, series) in span.items()})
        for k, span in spans.items()
    ]


@lru_cache(maxsize=65536)
def _collapse(key: SeriesKey, end: str) -> SeriesKey:
    if end == "source":
        return replace(key, source_workload=ANY, source_workload_namespace=ANY)
    if end == "service":
        return replace(key, source_workload=ANY, source_workload_namespace=ANY,
                       destination_service=UNKNOWN)  # fmt: skip
    return replace(key, destination_service=ANY)  # the workload kept: "unknown" for replies


def _collapsed(increases: Mapping[str, Increase], end: str) -> dict[str, Increase]:
    """The same increases with one end of every series made one: ``source`` (every
    sender alike), ``service`` (sources and Services alike: into workloads) or
    ``destination`` (every receiver alike)."""
    out = {}
    for proxy, inc in increases.items():
        series: Scrape = {}
        for key, counts in inc.series.items():
            key = _collapse(key, end)
            found = series.get(key)
            if found is None:
                series[key] = found = Counts()
            found.add(counts)
        out[proxy] = Increase(inc.seconds, series)
    return out


def _point(edge: dict[str, Any]) -> dict[str, Any]:
    return {
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


POINT: Final = ("per_second", "success_rate", "p50_ms", "p99_ms", "denied")


class Plots:
    """Each node's golden metrics over the last ``count`` spans of ``step`` seconds, as a
    dashboard plots them. A span that can no longer change (every scrape from now on
    falls in a later one) is computed once and remembered; spans older than the plot are
    forgotten."""

    def __init__(self, step: float = 10.0, count: int = 30) -> None:
        self.step = step
        self.count = count
        self._settled: dict[int, dict[str, dict[str, dict[str, Any]]]] = {}

    def series(self, history: History) -> dict[str, Any]:
        """``{"ends": [seconds...], "nodes": {name: {protocol: {field: [value or None,
        ...]}}}}``: a span's end in seconds from the newest scrape (the last one 0 or a
        little after), each node's points by field (:data:`POINT`), None where the span
        counted nothing for it."""
        newest = _newest(history)
        if newest is None:
            return {"ends": [], "nodes": {}}
        last = _bucket(newest, self.step)
        first = last - self.count + 1
        self._settled = {k: v for k, v in self._settled.items() if k >= first}
        missing = [k for k in range(first, last + 1) if k not in self._settled]
        computed = {k: golden(inc) for k, inc in steps(history, self.step, self.count,
                                                       only=missing)}  # fmt: skip
        for k, points in computed.items():
            if k < last:  # the newest span may still grow
                self._settled[k] = points
        nodes: dict[str, dict[str, dict[str, list[Any]]]] = {}
        for i, k in enumerate(range(first, last + 1)):
            for name, by_protocol in (self._settled.get(k) or computed.get(k) or {}).items():
                for protocol, point in by_protocol.items():
                    lines = nodes.setdefault(name, {}).setdefault(
                        protocol, {f: [None] * self.count for f in POINT}
                    )
                    for f in POINT:
                        lines[f][i] = point[f]
        ends = [round(k * self.step - newest, 3) for k in range(first, last + 1)]
        return {"ends": ends, "nodes": nodes}


def series(history: History, step: float, count: int) -> dict[str, Any]:
    """:meth:`Plots.series` without remembering anything."""
    return Plots(step, count).series(history)
