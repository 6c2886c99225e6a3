"""The mesh's traffic as a graph, from the proxies' own Prometheus metrics; sans-IO.

What the control plane's observer (:mod:`k8s.observer`) scrapes of each proxy is parsed
by :func:`parse_scrape` (prometheus_client's text parser) into a :data:`Scrape`: Istio's
series reduced to the labels an edge needs (:class:`SeriesKey`), each with its request
count, duration buckets and TCP counters. :class:`History` keeps each proxy's scrapes for
a bounded time; :meth:`History.increases` gives what each series counted over a window
(a counter that went down was reset, by a restart: its whole value is the increase, as
Prometheus's ``increase``), and :func:`edges` makes those the graph:

- an **edge** is a source workload (namespace, name) to a destination Service (its
  hostname), or to a workload where no Service is known, for one protocol class
  (``http``: HTTP and gRPC requests; ``tcp``: connections);
- each edge counts one reporter's series only, so a request or connection reported by
  both ends is counted once (as Kiali does): ``waypoint`` where a waypoint reported it,
  else ``destination``, else ``source``;
- per edge: requests (or connections) and their rate, success rate (not 5xx; for TCP,
  connections without a response flag), p50 and p99 from
  ``istio_request_duration_milliseconds``' buckets (interpolated within a bucket as
  Prometheus's ``histogram_quantile``), whether all of it was mutual TLS, how much was
  denied (a connection flagged ``DENY`` by ztunnel; a 401 or 403 the waypoint answered
  itself, ``destination_workload`` unknown, which is what AuthorizationPolicy and
  RequestAuthentication refusals look like, as in Envoy), the response flags counted, and
  for TCP the bytes each way.

:func:`flags_by_service` gives the waypoints' response flags per destination Service: what
:mod:`k8s.local_replies` writes on the objects that configure that Service.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from prometheus_client.parser import text_string_to_metric_families

UNKNOWN: Final = "unknown"
NO_FLAGS: Final = "-"
REPORTER_PREFERENCE: Final = ("waypoint", "destination", "source")
DENIED_HTTP: Final = ("401", "403")


@dataclass(frozen=True, order=True)
class SeriesKey:
    """The labels of Istio's series that the graph reads; series differing only in
    others (principals, apps, versions...) are summed."""

    reporter: str
    source_workload: str
    source_workload_namespace: str
    destination_service: str
    destination_service_namespace: str
    destination_service_name: str
    destination_workload: str
    destination_workload_namespace: str
    protocol: str  # "http" (HTTP and gRPC requests) or "tcp"
    connection_security_policy: str
    response_code: str
    response_flags: str

    @classmethod
    def of(cls, labels: Mapping[str, str], protocol: str) -> SeriesKey:
        def get(name: str) -> str:
            return labels.get(name) or UNKNOWN

        return cls(
            get("reporter"), get("source_workload"), get("source_workload_namespace"),
            get("destination_service"), get("destination_service_namespace"),
            get("destination_service_name"), get("destination_workload"),
            get("destination_workload_namespace"), protocol,
            get("connection_security_policy"), labels.get("response_code", ""),
            labels.get("response_flags") or NO_FLAGS,
        )  # fmt: skip


@dataclass
class Counts:
    """What one series counted: requests, cumulative duration buckets by upper bound
    (ms), TCP connections opened and bytes (``sent``: back to the client)."""

    requests: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    opened: float = 0.0
    sent: float = 0.0
    received: float = 0.0
    created: float = 0.0  # it began at or after this (its process's start, unix time); 0: unknown

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        for bound, value in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + value
        self.opened += other.opened
        self.sent += other.sent
        self.received += other.received

    def increase_since(self, old: Counts | None) -> Counts:
        """What was counted since ``old``; a value that went down was reset (a restarted
        proxy): all of it is new."""

        def since(new: float, before: float) -> float:
            return new - before if new >= before else new

        if old is None:
            return Counts(self.requests, dict(self.buckets), self.opened, self.sent,
                          self.received)  # fmt: skip
        return Counts(
            since(self.requests, old.requests),
            {b: since(v, old.buckets.get(b, 0.0)) for b, v in self.buckets.items()},
            since(self.opened, old.opened),
            since(self.sent, old.sent),
            since(self.received, old.received),
        )


Scrape: TypeAlias = dict[SeriesKey, Counts]


def parse_scrape(text: str) -> Scrape:
    """Istio's request and TCP series of one ``/metrics`` answer; any other is ignored.
    Raises ``ValueError`` for text that is not Prometheus's exposition format."""
    out: Scrape = {}
    started = 0.0

    def counts(labels: Mapping[str, str], protocol: str) -> Counts:
        key = SeriesKey.of(labels, protocol)
        found = out.get(key)
        if found is None:
            found = out[key] = Counts()
        return found

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "istio_requests_total":
                counts(labels, "http").requests += value
            elif name == "process_start_time_seconds":
                started = value
            elif name == "istio_request_duration_milliseconds_bucket":
                bound = float(labels.get("le", "+Inf"))
                c = counts({k: v for k, v in labels.items() if k != "le"}, "http")
                c.buckets[bound] = c.buckets.get(bound, 0.0) + value
            elif name == "istio_tcp_connections_opened_total":
                counts(labels, "tcp").opened += value
            elif name == "istio_tcp_sent_bytes_total":
                counts(labels, "tcp").sent += value
            elif name == "istio_tcp_received_bytes_total":
                counts(labels, "tcp").received += value
    for found in out.values():  # each series began after its process did
        found.created = started
    return out


@dataclass(frozen=True)
class Increase:
    """What one proxy's series counted over ``seconds`` (its scrapes' own span)."""

    seconds: float
    series: Scrape


class History:
    """Each proxy's scrapes (``(time, Scrape)``, oldest first), kept for ``keep`` seconds
    (and at most ``limit`` per proxy); proxies unheard of for ``keep`` are forgotten.
    Every scrape of the last ``fine`` seconds is kept, older ones ``coarse`` seconds apart
    at least (the counters are cumulative: a window needs only its two ends), so ten
    minutes scraped every 5 s hold about 30 scrapes a proxy, not 121."""

    def __init__(
        self, keep: float = 600.0, limit: int = 256, *, fine: float = 60.0, coarse: float = 30.0
    ) -> None:
        self.keep = keep
        self.fine = fine
        self.coarse = coarse
        self._limit = limit
        self._scrapes: dict[str, deque[tuple[float, Scrape]]] = {}
        self._wall: dict[str, float] = {}  # per proxy: unix time minus ``now``'s clock

    def add(self, proxy: str, now: float, scrape: Scrape, *, wall: float | None = None) -> None:
        """``wall``: the unix time of ``now``, to compare with a process's start time."""
        if wall is not None:
            self._wall[proxy] = wall - now
        ring = self._scrapes.get(proxy)
        if ring is None:
            ring = self._scrapes[proxy] = deque(maxlen=self._limit)
        ring.append((now, scrape))
        self._thin(ring, now)
        self.expire(now)

    def _thin(self, ring: deque[tuple[float, Scrape]], now: float) -> None:
        """Drop the scrapes older than ``fine`` that follow a kept one by less than
        ``coarse`` seconds."""
        kept: list[tuple[float, Scrape]] = []
        for at, scrape in ring:
            old = at < now - self.fine
            if old and kept and at - kept[-1][0] < self.coarse:
                continue
            kept.append((at, scrape))
        if len(kept) != len(ring):
            ring.clear()
            ring.extend(kept)

    def expire(self, now: float) -> None:
        for proxy, ring in list(self._scrapes.items()):
            while len(ring) > 1 and ring[1][0] <= now - self.keep:
                ring.popleft()  # one at or before the window's start stays as its base
            if ring[-1][0] <= now - self.keep:
                del self._scrapes[proxy]

    def proxies(self) -> list[str]:
        return sorted(self._scrapes)

    def copy(self) -> History:
        """The same scrapes (never changed once added), in rings of its own: another thread
        may read it while this one goes on."""
        other = History(self.keep, self._limit)
        other._scrapes = {p: deque(ring, maxlen=self._limit) for p, ring in self._scrapes.items()}
        return other

    def rings(self) -> Mapping[str, deque[tuple[float, Scrape]]]:
        """Each proxy's scrapes, oldest first (not to be changed: :mod:`mesh.traffic_series`
        reads them)."""
        return self._scrapes

    def increases(self, window: float) -> dict[str, Increase]:
        """Per proxy, what its series counted between its newest scrape and the last one
        at or before ``window`` seconds before it (or its oldest: a shorter span), scrape
        by scrape, as Prometheus's ``increase``: a proxy that restarted in between (its
        counters back near zero) keeps what it had counted before. A series that appears
        counts from zero, and so does one already in a proxy's first scrape when that
        scrape is in the window and the proxy's process started in it too
        (``process_start_time_seconds``: a new waypoint's first requests). A proxy scraped
        once has no increase yet."""
        out = {}
        for proxy, ring in self._scrapes.items():
            if len(ring) < 2:
                continue
            now = ring[-1][0]
            start = 0
            for i, (at, _scrape) in enumerate(ring):
                if at > now - window:
                    break
                start = i
            if start == len(ring) - 1:
                continue
            total: Scrape = {}
            previous = ring[start][1]
            offset = self._wall.get(proxy)
            if start == 0 and ring[0][0] > now - window and offset is not None:
                # First seen inside the window: what it counted before that first scrape
                # is in the window too if its process started in it.
                began = now - window + offset
                for key, counts in previous.items():
                    if counts.created >= began:
                        total[key] = counts.increase_since(None)
            for i in range(start + 1, len(ring)):
                scrape = ring[i][1]
                for key, counts in scrape.items():
                    step = counts.increase_since(previous.get(key))
                    if key in total:
                        total[key].add(step)
                    else:
                        total[key] = step
                previous = scrape
            out[proxy] = Increase(now - ring[start][0], total)
        return out


@dataclass(frozen=True, order=True)
class EdgeKey:
    source_namespace: str
    source_workload: str
    destination: str  # a Service's hostname, else a workload's namespace/name
    protocol: str


def _edge_key(k: SeriesKey) -> EdgeKey:
    if k.destination_service != UNKNOWN:
        destination = k.destination_service
    else:
        destination = f"{k.destination_workload_namespace}/{k.destination_workload}"
    return EdgeKey(k.source_workload_namespace, k.source_workload, destination, k.protocol)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``histogram_quantile(q, ...)`` of cumulative ``buckets`` by upper bound; None when
    they counted nothing. In the ``+Inf`` bucket: the highest finite bound."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


@dataclass
class _Edge:
    key: EdgeKey
    reporter: str
    seconds: float = 0.0
    rate: float = 0.0
    total: Counts = field(default_factory=Counts)
    ok: float = 0.0  # requests not 5xx; connections without a flag
    mtls: bool = True
    denied: float = 0.0
    flags: dict[str, float] = field(default_factory=dict)
    destination_workloads: set[str] = field(default_factory=set)

    def count(self, k: SeriesKey, c: Counts, seconds: float) -> None:
        n = c.requests if k.protocol == "http" else c.opened
        if n <= 0 and c.sent <= 0 and c.received <= 0:
            return
        self.total.add(c)
        self.rate += n / seconds
        self.seconds = max(self.seconds, seconds)
        if k.protocol == "http":
            self.ok += 0 if k.response_code.startswith("5") else n
            local = k.destination_workload == UNKNOWN and k.response_flags == NO_FLAGS
            self.denied += n if local and k.response_code in DENIED_HTTP else 0
        else:
            self.ok += n if k.response_flags == NO_FLAGS else 0
            self.denied += n if "DENY" in k.response_flags.split(",") else 0
        self.mtls = self.mtls and k.connection_security_policy == "mutual_tls"
        if k.response_flags != NO_FLAGS and n > 0:
            for flag in k.response_flags.split(","):
                self.flags[flag] = self.flags.get(flag, 0.0) + n
        if k.destination_workload != UNKNOWN:
            self.destination_workloads.add(
                f"{k.destination_workload_namespace}/{k.destination_workload}"
            )

    def to_json(self) -> dict[str, Any]:
        k, t = self.key, self.total
        n = t.requests if k.protocol == "http" else t.opened
        out: dict[str, Any] = {
            "source": {"namespace": k.source_namespace, "workload": k.source_workload},
            "destination": k.destination,
            "destination_workloads": sorted(self.destination_workloads),
            "protocol": k.protocol,
            "reporter": self.reporter,
            "seconds": round(self.seconds, 3),
            "requests" if k.protocol == "http" else "connections": round(n),
            "per_second": round(self.rate, 3),
            "success_rate": round(self.ok / n, 4) if n else None,
            "mtls": self.mtls,
            "denied": round(self.denied),
            "response_flags": {f: round(v) for f, v in sorted(self.flags.items())},
        }
        if k.protocol == "http":
            p50, p99 = quantile(0.5, t.buckets), quantile(0.99, t.buckets)
            out["p50_ms"] = round(p50, 3) if p50 is not None else None
            out["p99_ms"] = round(p99, 3) if p99 is not None else None
        else:
            out["bytes_received"] = round(t.received)  # from the client
            out["bytes_sent"] = round(t.sent)  # back to it
        return out


def edges(increases: Mapping[str, Increase]) -> list[dict[str, Any]]:
    """The graph's edges (JSON), one reporter's series each, sorted by key."""
    by_edge: dict[EdgeKey, dict[str, list[tuple[SeriesKey, Counts, float]]]] = {}
    for inc in increases.values():
        if inc.seconds <= 0:
            continue
        for k, c in inc.series.items():
            by_edge.setdefault(_edge_key(k), {}).setdefault(k.reporter, []).append(
                (k, c, inc.seconds)
            )
    out = []
    for key in sorted(by_edge):
        reporters = by_edge[key]
        reporter = next((r for r in REPORTER_PREFERENCE if r in reporters), min(reporters))
        edge = _Edge(key, reporter)
        for k, c, seconds in reporters[reporter]:
            edge.count(k, c, seconds)
        if edge.total.requests > 0 or edge.total.opened > 0 or edge.total.sent > 0:
            out.append(edge.to_json())
    return out


ServiceRef: TypeAlias = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ServiceFlags:
    """The response flags waypoints counted on a Service's requests, and which
    waypoints (their proxies' names) counted them."""

    flags: Mapping[str, int]
    waypoints: tuple[str, ...]


def flags_by_service(
    increases: Mapping[str, Increase], waypoints: Iterable[str] | None = None
) -> dict[ServiceRef, ServiceFlags]:
    """Per destination Service, the waypoints' requests by response flag (``-`` left
    out) over the increases' span; only the proxies named in ``waypoints`` when given."""
    wanted = set(waypoints) if waypoints is not None else None
    counts: dict[ServiceRef, dict[str, float]] = {}
    seen: dict[ServiceRef, set[str]] = {}
    for proxy, inc in increases.items():
        if wanted is not None and proxy not in wanted:
            continue
        for k, c in inc.series.items():
            if k.reporter != "waypoint" or k.protocol != "http" or k.response_flags == NO_FLAGS:
                continue
            if k.destination_service_name == UNKNOWN or c.requests <= 0:
                continue
            ref = (k.destination_service_namespace, k.destination_service_name)
            for flag in k.response_flags.split(","):
                by_flag = counts.setdefault(ref, {})
                by_flag[flag] = by_flag.get(flag, 0.0) + c.requests
            seen.setdefault(ref, set()).add(proxy)
    return {
        ref: ServiceFlags(
            {f: round(v) for f, v in sorted(by_flag.items())}, tuple(sorted(seen[ref]))
        )
        for ref, by_flag in counts.items()
    }
