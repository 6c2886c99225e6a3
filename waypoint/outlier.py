"""Outlier detection for one backend's endpoints, as Istio's ``DestinationRule``
``trafficPolicy.outlierDetection`` configures Envoy's:

- ``consecutive5xxErrors`` answers of 5xx in a row (the waypoint's own 502/503/504 for a
  failed connection count too) eject the endpoint; ``consecutiveGatewayErrors`` counts
  only 502, 503 and 504 (and failed connections). Any other answer resets the run.
- An ejected endpoint gets no request for ``baseEjectionTime`` times the number of times
  it was ejected (capped at ``maxEjectionTime``); each ``interval`` it spends healthy and
  back in service takes one off that number, so an endpoint that relapses soon is out
  for longer and one that stays healthy is forgiven.
- No ejection takes the share of ejected endpoints to ``maxEjectionPercent`` or above,
  except that one endpoint may always be ejected (Envoy's rule: the share before this
  ejection must be below the limit). When every endpoint is out the balancer has none:
  ``503 UH``.

Pure: the caller passes ``now``. Endpoints are keys (``(ip, port)``); an endpoint never
seen is healthy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

GATEWAY_ERRORS: Final = frozenset({502, 503, 504})
CONNECT_FAILURE: Final = 0  # the status :meth:`OutlierDetector.result` takes for one

K = TypeVar("K")


@dataclass(frozen=True)
class OutlierConfig:
    """Istio's defaults: 5 errors in a row, checked every 10 s, 30 s base ejection,
    10% of endpoints at most; ``0`` disables a trigger."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection_percent: float = 10.0
    max_ejection: float = 300.0


@dataclass
class _Endpoint:
    errors_5xx: int = 0
    errors_gateway: int = 0
    ejections: int = 0  # the multiplier of the next ejection's length
    ejected_until: float = -math.inf
    healthy_since: float = 0.0  # when it last came back (or was first seen)


@dataclass
class OutlierDetector:
    config: OutlierConfig = field(default_factory=OutlierConfig)
    _endpoints: dict[object, _Endpoint] = field(default_factory=dict)
    ejected_total: int = 0  # for the metrics

    def result(self, key: object, status: int, now: float, *, pool: int) -> bool:
        """Record an answer (``CONNECT_FAILURE`` for a connection that failed) from
        ``key``, one of ``pool`` endpoints; True if it was ejected by it."""
        ep = self._endpoints.setdefault(key, _Endpoint(healthy_since=now))
        self._forgive(ep, now)
        failed_gateway = status == CONNECT_FAILURE or status in GATEWAY_ERRORS
        failed_5xx = failed_gateway or status >= 500
        ep.errors_5xx = ep.errors_5xx + 1 if failed_5xx else 0
        ep.errors_gateway = ep.errors_gateway + 1 if failed_gateway else 0
        c = self.config
        tripped = (c.consecutive_5xx and ep.errors_5xx >= c.consecutive_5xx) or (
            c.consecutive_gateway and ep.errors_gateway >= c.consecutive_gateway
        )
        if not tripped or self.is_ejected(key, now):
            return False
        ejected = self.ejected_count(now)
        if ejected and ejected * 100 >= c.max_ejection_percent * pool:
            return False  # the share of ejected endpoints is at its limit already
        ep.ejections += 1
        ep.ejected_until = now + min(c.base_ejection * ep.ejections, c.max_ejection)
        ep.errors_5xx = ep.errors_gateway = 0
        self.ejected_total += 1
        return True

    def is_ejected(self, key: object, now: float) -> bool:
        ep = self._endpoints.get(key)
        if ep is None:
            return False
        return now < ep.ejected_until

    def ejected_for(self, key: object, now: float) -> float:
        """Seconds ``key`` stays ejected (0 when it is not)."""
        ep = self._endpoints.get(key)
        return max(0.0, ep.ejected_until - now) if ep is not None else 0.0

    def ejected_count(self, now: float) -> int:
        return sum(1 for key in self._endpoints if self.is_ejected(key, now))

    def available(self, keys: Sequence[K], now: float) -> list[K]:
        """``keys`` that are not ejected, in order."""
        return [k for k in keys if not self.is_ejected(k, now)]

    def forget(self, keep: Iterable[object]) -> None:
        """Drop the state of endpoints no longer in the backend."""
        wanted = set(keep)
        for key in [k for k in self._endpoints if k not in wanted]:
            del self._endpoints[key]

    def ejection_multiplier(self, key: object, now: float) -> int:
        """How many times the next ejection of ``key`` multiplies the base ejection time,
        less one (0 for an endpoint with a clean record)."""
        ep = self._endpoints.get(key)
        if ep is None:
            return 0
        self._forgive(ep, now)
        return ep.ejections

    def _forgive(self, ep: _Endpoint, now: float) -> None:
        """One ejection forgotten per whole ``interval`` spent healthy and in service."""
        if ep.ejections == 0 or now < ep.ejected_until:
            return
        start = max(ep.healthy_since, ep.ejected_until)
        whole = int((now - start) // self.config.interval)
        if whole > 0:
            ep.ejections = max(0, ep.ejections - whole)
            ep.healthy_since = start + whole * self.config.interval
