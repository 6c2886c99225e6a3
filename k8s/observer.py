"""The control plane's observer: it reads the proxies' metrics, so the mesh can be seen
without Prometheus.

Every ``interval`` seconds (:class:`ObserverConfig`, 5 s) it GETs ``/metrics`` on port
15020 of each proxy connected to the config stream (ztunnels and waypoints; the address
its stream came from, :attr:`k8s.config_server.ProxyStatus.address`), at most
``concurrency`` at a time, each within ``timeout``. A proxy that does not answer is
skipped, logged once (``proxy_scrape_failed``) until it answers again
(``proxy_scrape_recovered``). What each answered is parsed
(:func:`mesh.traffic_graph.parse_scrape`) and kept ``keep`` seconds (10 minutes) in a
:class:`mesh.traffic_graph.History`, from which it serves:

- :meth:`Observer.graph`: the traffic graph over a window (``/debug/graph?window=60`` on
  the control plane's 15014): edges with rates, success rate, latency, mTLS and denials;
- :meth:`Observer.local_replies`: after each round, the waypoints' response flags over
  the last ``flags_window`` seconds (5 minutes) as the ``ambit.io/LocalReplies``
  condition of the objects they concern (:mod:`k8s.local_replies`), set in the store
  only when due (:class:`k8s.local_replies.Renewal`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

import h11
import structlog
import trio

from k8s.config_server import ProxyStatus
from k8s.local_replies import CONDITION_LOCAL_REPLIES, KINDS, Renewal, local_replies
from k8s.store import ObjectStore
from mesh.admin import Route, json_response
from mesh.constants import METRICS_PORT
from mesh.http import Request, Response
from mesh.http_get import BodyTooLarge, get
from mesh.traffic_graph import History, edges, flags_by_service, parse_scrape

log = structlog.get_logger("k8s.observer")

BODY_LIMIT: Final = 32 * 1024 * 1024  # a /metrics answer larger than this is refused
MAX_WINDOW: Final = 600.0


@dataclass(frozen=True)
class ObserverConfig:
    interval: float = 5.0  # seconds between rounds
    timeout: float = 2.0  # for one proxy's answer, connect to last byte
    concurrency: int = 8  # proxies scraped at once
    keep: float = 600.0  # seconds of scrapes kept
    flags_window: float = 300.0  # the window of the LocalReplies condition
    hold: float = 60.0  # a condition's message renewed at most this often
    port: int = METRICS_PORT


@dataclass(frozen=True)
class Target:
    """One proxy to scrape: ``key`` names it in the graph and the logs, ``"ztunnel:NODE"``
    or ``"waypoint:NS/SA"``, with ``@ADDRESS`` (replicas of a waypoint share the rest)."""

    key: str
    address: str


def targets(proxies: Iterable[ProxyStatus]) -> list[Target]:
    """The connected proxies whose address is known."""
    out = []
    for p in proxies:
        if not p.connected or not p.address:
            continue
        name = p.node
        if p.role == "waypoint":
            # The peer's identity (spiffe://TD/ns/NS/sa/SA): its service account, named
            # after its waypoint Gateway.
            parts = p.peer.split("/")
            name = f"{p.name}/{parts[-1]}" if len(parts) >= 2 and parts[-2] == "sa" else p.name
        out.append(Target(f"{p.role}:{name}@{p.address}", p.address))
    return sorted(set(out), key=lambda t: t.key)


class ScrapeError(Exception):
    """A proxy did not answer ``/metrics`` with 200 and a body in time."""


async def http_get(address: str, port: int, path: str, *, limit: int = BODY_LIMIT) -> bytes:
    """The body of a 200 answer to GET ``path`` (HTTP/1.1, one connection); the caller
    bounds the time. Raises :class:`ScrapeError` otherwise."""
    try:
        stream = await trio.open_tcp_stream(address, port)
    except OSError as exc:
        raise ScrapeError(f"connect: {exc.strerror or exc}") from None
    async with stream:
        try:
            status, body = await get(stream, address, path, limit=limit)
        except BodyTooLarge as exc:
            raise ScrapeError(str(exc)) from None
        except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise ScrapeError(f"read: {exc}") from None
    if status != 200:
        raise ScrapeError(f"HTTP {status}")
    return body


class Observer:
    """Scrapes ``proxies()``'s targets each round; :meth:`run` until cancelled."""

    def __init__(
        self,
        proxies: Callable[[], Iterable[ProxyStatus]],
        config: ObserverConfig | None = None,
    ) -> None:
        self.config = config or ObserverConfig()
        self._proxies = proxies
        self.history = History(keep=self.config.keep)
        self._failing: dict[str, str] = {}  # target key -> why, logged once
        self._renewal = Renewal(hold=self.config.hold, window=_words(self.config.flags_window))
        self._known: set[str] = set()  # every target key seen
        self._last_round: float | None = None  # when the last round started
        self.rounds = 0

    async def scrape_round(self) -> None:
        """Scrape every target once (``concurrency`` at a time, each within ``timeout``)."""
        started = trio.current_time()
        limiter = trio.CapacityLimiter(self.config.concurrency)
        async with trio.open_nursery() as nursery:
            for target in targets(self._proxies()):
                if target.key not in self._known and self._last_round is not None:
                    # It connected since the last round: a new process (or pod), whose
                    # counters started at zero then. Without this, what it counted before
                    # its first scrape would be lost, as Prometheus loses it.
                    self.history.add(target.key, self._last_round, {})
                self._known.add(target.key)
                nursery.start_soon(self._scrape, target, limiter)
        self.history.expire(trio.current_time())
        kept = set(self.history.proxies()) | {t.key for t in targets(self._proxies())}
        self._known &= kept  # bounded: a proxy gone for ``keep`` is new when it comes back
        self._last_round = started
        self.rounds += 1

    async def _scrape(self, target: Target, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            why = ""
            with trio.move_on_after(self.config.timeout) as scope:
                try:
                    body = await http_get(target.address, self.config.port, "/metrics")
                    scrape = await trio.to_thread.run_sync(parse_scrape, body.decode())
                except ScrapeError as exc:
                    why = str(exc)
                except (ValueError, UnicodeDecodeError) as exc:
                    why = f"not Prometheus text: {exc}"
            if scope.cancelled_caught:
                why = f"no answer within {self.config.timeout} s"
        if why:
            if target.key not in self._failing:
                hint = "is port 15020 of the proxy reachable from the control plane?"
                log.warning("proxy_scrape_failed", proxy=target.key, reason=why, hint=hint)
            self._failing[target.key] = why
            return
        if self._failing.pop(target.key, None) is not None:
            log.info("proxy_scrape_recovered", proxy=target.key)
        self.history.add(target.key, trio.current_time(), scrape, wall=time.time())

    def graph(self, window: float) -> dict[str, Any]:
        """The traffic graph over the last ``window`` seconds (JSON)."""
        return {
            "window_seconds": window,
            "proxies": [
                {"proxy": key, "failing": self._failing.get(key)}
                for key in sorted(set(self.history.proxies()) | self._failing.keys())
            ],
            "edges": edges(self.history.increases(window)),
        }

    def local_replies(self, store: ObjectStore) -> int:
        """Set each object's ``ambit.io/LocalReplies`` where due; how many were set."""
        flags = flags_by_service(
            self.history.increases(self.config.flags_window),
            [p for p in self.history.proxies() if p.startswith("waypoint:")],
        )
        flags = {
            ref: replace(f, waypoints=tuple(sorted({_display(w) for w in f.waypoints})))
            for ref, f in flags.items()
        }
        entries = [e for kind in KINDS for e in store.entries(kind)]
        wanted = local_replies((e.obj for e in entries), flags, self._renewal.window)
        uids = {e.ref: e.obj.uid for e in entries}
        due = self._renewal.due(trio.current_time(), wanted, uids)
        for ref, condition in due.items():
            if ref in uids:
                store.set_observed(ref, CONDITION_LOCAL_REPLIES, condition, uid=uids[ref])
        return len(due)

    def graph_route(self) -> Callable[[Request], Response]:
        """``/debug/graph?window=SECONDS`` (default 60, at most 600)."""

        def route(request: Request) -> Response:
            try:
                window = float(request.query.get("window", "60"))
            except ValueError:
                return json_response({"error": "window is a number of seconds"}, 400)
            if not 0 < window <= MAX_WINDOW:
                return json_response({"error": f"window is in (0, {MAX_WINDOW:g}]"}, 400)
            return json_response(self.graph(window))

        return route

    async def run(
        self,
        store: ObjectStore | None = None,
        *,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Scrape every ``interval``; with ``store``, set the LocalReplies conditions
        after each round and, when any was set, call ``after``. Runs until cancelled."""
        while True:
            deadline = trio.current_time() + self.config.interval
            await self.scrape_round()
            if store is not None and self.local_replies(store) and after is not None:
                await after()
            await trio.sleep_until(deadline)


def _words(seconds: float) -> str:
    """300 -> "5m", 90 -> "90s"."""
    return f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"


def observing(
    proxies: Callable[[], Iterable[ProxyStatus]],
    store: ObjectStore,
    config: ObserverConfig,
    routes: dict[str, Route],
    *,
    after: Callable[[], Awaitable[None]],
) -> tuple[Observer, Callable[[], Awaitable[None]]]:
    """The control plane's observer as its process runs it: ``/debug/graph`` added to
    ``routes``, the observer (``ambit dashboard``'s pages read it) and the task
    (:meth:`Observer.run` with ``store``: the LocalReplies conditions, which the status
    writer, on the leader, writes to the cluster; ``after`` rewrites local mode's status
    file). The task returns at once when ``interval`` is 0."""
    observer = Observer(proxies, config)
    routes["/debug/graph"] = observer.graph_route()

    async def observe() -> None:
        if config.interval > 0:
            await observer.run(store, after=after)

    return observer, observe


def _display(key: str) -> str:
    """The name in a message: "waypoint:shop/waypoint@10.244.0.9" is "shop/waypoint"."""
    return key.partition(":")[2].rpartition("@")[0]
