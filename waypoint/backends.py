"""How the waypoint treats one backend Service: the endpoint a request goes to, whether it
may go at all, and what its answer teaches, under the Service's ``DestinationRule`` and
``BackendTrafficPolicy`` (:mod:`mesh.model_traffic`).

- **Balancing** (``loadBalancer.simple``): ``LEAST_REQUEST`` (the default, as Istio's:
  power of two choices on requests in flight, :class:`~waypoint.upstream.Balancer`),
  ``ROUND_ROBIN``, ``RANDOM``, or ambit's ``PEAK_EWMA`` (:mod:`waypoint.ewma`, Linkerd's).
  A retry goes to another endpoint when there is one.
- **Outlier detection** (:mod:`waypoint.outlier`): each answer is counted against its
  endpoint; ejected endpoints get no request; when every endpoint is ejected there is none
  to pick and the request gets ``503 UH``.
- **Circuit breaking** (``connectionPool``), as Envoy's thresholds: beyond
  ``http2MaxRequests`` requests in flight to the Service, a request is refused at once
  with ``503 UO``; with ``maxConnections``, a request to an HTTP/1.1 app waits for one of
  that many connections in use, ``http1MaxPendingRequests`` of them at most, the next
  refused at once (``503 UO``); ``maxRequestsPerConnection`` closes a connection after
  that many requests; ``maxRetries`` bounds the retries in flight at once.
- **Retry budget** (``BackendTrafficPolicy``'s ``retryConstraint``, else GEP-3388's
  defaults): :class:`~waypoint.budget.RetryBudget`.

One :class:`Backend` per Service, made again when its rule or policy changes (its
counters of requests in flight stay with the requests that hold it). Endpoint latency
for ``PEAK_EWMA`` is an attempt's whole duration.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

import structlog
import trio

from mesh.model import MeshSnapshot, Service
from mesh.model_traffic import BackendTrafficPolicy, ConnectionPool, DestinationRule
from waypoint.budget import BudgetConfig, RetryBudget
from waypoint.ewma import PeakEwma
from waypoint.outlier import CONNECT_FAILURE, OutlierConfig, OutlierDetector
from waypoint.upstream import Balancer, Target

log = structlog.get_logger("waypoint.backends")

NO_POOL: Final = ConnectionPool()
NO_ANSWER: Final = -1  # an attempt that ended without an answer the app is to blame for


class Overflow(Exception):
    """The Service's circuit is open: too many requests in flight, or waiting."""


def budget_config(policy: BackendTrafficPolicy | None) -> BudgetConfig:
    if policy is None:
        return BudgetConfig()
    b = policy.budget
    return BudgetConfig(b.percent, b.interval_ms / 1000, b.min_retries, b.min_interval_ms / 1000)


def outlier_config(rule: DestinationRule | None) -> OutlierConfig | None:
    if rule is None or rule.outlier is None:
        return None
    o = rule.outlier
    return OutlierConfig(
        consecutive_5xx=o.consecutive_5xx, consecutive_gateway=o.consecutive_gateway,
        interval=o.interval_ms / 1000, base_ejection=o.base_ejection_ms / 1000,
        max_ejection_percent=o.max_ejection_percent,
    )  # fmt: skip


class Backend:
    """One Service's balancer, outlier state, circuit-breaker counts and retry budget."""

    def __init__(
        self,
        key: str,
        rule: DestinationRule | None,
        policy: BackendTrafficPolicy | None,
        balancer: Balancer,
        rng: random.Random,
    ) -> None:
        self.key = key
        self.rule = rule
        self.policy = policy
        self.load_balancer = rule.load_balancer if rule is not None else "LEAST_REQUEST"
        self.pool = rule.pool if rule is not None and rule.pool is not None else NO_POOL
        config = outlier_config(rule)
        self.outlier = OutlierDetector(config) if config is not None else None
        self.ewma = PeakEwma(rng=rng) if self.load_balancer == "PEAK_EWMA" else None
        self.budget = RetryBudget(budget_config(policy))
        self._balancer = balancer
        self._rng = rng
        self._turn = 0  # round robin's next
        self.requests = 0  # in flight
        self.retrying = 0  # requests in flight that were sent again
        self.pending = 0  # waiting for a connection
        self.overflows = 0  # refused with UO
        self._connections = (
            trio.Semaphore(self.pool.max_connections) if self.pool.max_connections else None
        )

    # --- circuit breaking ------------------------------------------------------------------

    def admit(self) -> bool:
        """Count a request in flight, or say no (``UO``) at ``http2MaxRequests``."""
        limit = self.pool.max_requests
        if limit and self.requests >= limit:
            self.overflows += 1
            return False
        self.requests += 1
        return True

    def release(self) -> None:
        self.requests -= 1

    @property
    def connections_unlimited(self) -> bool:
        """No ``maxConnections``: :meth:`connection_slot` would take nothing (a request
        skips it, and its coroutine)."""
        return self._connections is None

    async def connection_slot(self) -> bool:
        """Wait for one of ``maxConnections`` (HTTP/1.1 connections in use); raises
        :class:`Overflow` when ``http1MaxPendingRequests`` are waiting already. True when a
        slot was taken (give it back with :meth:`connection_done`)."""
        slots = self._connections
        if slots is None:
            return False
        if slots.value == 0:
            limit = self.pool.max_pending
            if limit and self.pending >= limit:
                self.overflows += 1
                raise Overflow
            self.pending += 1
            try:
                await slots.acquire()
            finally:
                self.pending -= 1
        else:
            slots.acquire_nowait()
        return True

    def connection_done(self, taken: bool) -> None:
        if taken and self._connections is not None:
            self._connections.release()

    def reusable(self, requests_on_connection: int) -> bool:
        """Whether a connection that carried that many requests may carry another."""
        limit = self.pool.max_requests_per_connection
        return not limit or requests_on_connection < limit

    def may_retry(self) -> bool:
        """Whether ``maxRetries`` leaves room for one more request being retried."""
        limit = self.pool.max_retries
        return not limit or self.retrying < limit

    # --- balancing and outlier detection ---------------------------------------------------

    def pick(self, targets: Sequence[Target], avoid: Sequence[Target] = ()) -> Target | None:
        """An endpoint for the next attempt; None when none is left (all ejected)."""
        if self.outlier is not None:
            targets = self.outlier.available(targets, trio.current_time())
        if not targets:
            return None
        pool = [t for t in targets if t not in avoid] if avoid else targets
        pool = pool or targets
        lb = self.load_balancer
        if lb == "LEAST_REQUEST" or len(pool) == 1:
            return self._balancer.pick(pool)
        if lb == "ROUND_ROBIN":
            self._turn += 1
            return pool[(self._turn - 1) % len(pool)]
        if lb == "RANDOM":
            return pool[self._rng.randrange(len(pool))]
        assert self.ewma is not None
        return self.ewma.pick(pool, trio.current_time())

    def started(self, target: Target) -> float:
        """An attempt to ``target`` begins; its start time, for :meth:`finished`."""
        self._balancer.started(target)
        now = trio.current_time()
        if self.ewma is not None:
            self.ewma.started(target, now)
        return now

    def finished(self, target: Target, status: int, started: float, pool: int) -> None:
        """The attempt to ``target`` (one of ``pool`` endpoints) ended with ``status``:
        an HTTP status, :data:`~waypoint.outlier.CONNECT_FAILURE`, or :data:`NO_ANSWER`."""
        self._balancer.finished(target)
        now = trio.current_time()
        if self.ewma is not None:
            self.ewma.finished(target, now - started, now)
        if self.outlier is not None and status != NO_ANSWER:
            self._result(target, status, now, pool)

    def connect_failed(self, target: Target, pool: int) -> None:
        """No connection to ``target`` could be opened (no attempt was started)."""
        if self.outlier is not None:
            self._result(target, CONNECT_FAILURE, trio.current_time(), pool)

    def _result(self, target: Target, status: int, now: float, pool: int) -> None:
        assert self.outlier is not None
        if self.outlier.result(target, status, now, pool=pool):
            times = self.outlier.ejection_multiplier(target, now)
            log.info("endpoint_ejected", service=self.key, endpoint=target.authority,
                     status=status, ejections=times,
                     seconds=round(self.outlier.ejected_for(target, now), 3))  # fmt: skip


class Backends:
    """Every Service's :class:`Backend`, made on first use and again when the Service's
    DestinationRule or BackendTrafficPolicy changes."""

    def __init__(self, balancer: Balancer, rng: random.Random | None = None) -> None:
        self._balancer = balancer
        self._rng = rng or random.Random()
        self._by_key: dict[str, Backend] = {}

    def of(self, snapshot: MeshSnapshot, service: Service | None) -> Backend:
        key = service.key if service is not None else ""
        found = self._by_key.get(key)
        rule = snapshot.destination_rule(key) if key else None
        policy = snapshot.backend_traffic_policy(key) if key else None
        if found is not None and _same(found.rule, rule) and _same(found.policy, policy):
            return found
        if len(self._by_key) > 2 * len(snapshot.services) + 64:  # Services gone: forget them
            self._by_key = {k: b for k, b in self._by_key.items() if snapshot.service(k)}
        backend = self._by_key[key] = Backend(key, rule, policy, self._balancer, self._rng)
        if rule is not None or policy is not None:
            log.info("backend_policy", service=key, load_balancer=backend.load_balancer,
                     destination_rule=rule.key if rule else None,
                     traffic_policy=policy.key if policy else None)  # fmt: skip
        return backend


def _same(a: object, b: object) -> bool:
    return a is b or a == b
