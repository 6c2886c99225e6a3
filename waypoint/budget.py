"""A retry budget for one backend (Gateway API's ``BackendTrafficPolicy``, GEP-3388;
Linkerd's retry budget): retries may be at most ``percent`` of the requests sent to
the backend over the last ``interval``, and never fewer than ``min_retries`` per
``min_interval`` are refused, so a backend that fails everything sees a bounded
extra load (no retry storm) while a quiet one still gets its few retries.

Pure: the caller passes ``now`` (seconds, any monotonic clock). Counts are kept in
:data:`BUCKETS` time buckets per window, so memory is constant whatever the rate and
the window slides in steps of ``interval / BUCKETS``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

BUCKETS: Final = 10  # per window: the window slides in tenths of its length


@dataclass(frozen=True)
class BudgetConfig:
    """GEP-3388's ``retryConstraint`` with its defaults: 20% over 10 s, at least 10
    retries per second."""

    percent: float = 20.0
    interval: float = 10.0
    min_retries: int = 10
    min_interval: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"budget percent {self.percent} is not between 0 and 100")
        if self.interval <= 0 or self.min_interval <= 0:
            raise ValueError("budget intervals must be longer than zero")
        if self.min_retries < 0:
            raise ValueError(f"minimum retries {self.min_retries} is negative")


class _Window:
    """Counts of events over the last ``length`` seconds, in :data:`BUCKETS` buckets."""

    def __init__(self, length: float) -> None:
        self.step = length / BUCKETS
        self._buckets: deque[tuple[int, int]] = deque()  # (bucket number, count)
        self._total = 0

    def add(self, now: float) -> None:
        number = math.floor(now / self.step)
        self._expire(number)
        if self._buckets and self._buckets[-1][0] == number:
            _, count = self._buckets[-1]
            self._buckets[-1] = (number, count + 1)
        else:
            self._buckets.append((number, 1))
        self._total += 1

    def total(self, now: float) -> int:
        self._expire(math.floor(now / self.step))
        return self._total

    def _expire(self, number: int) -> None:
        while self._buckets and self._buckets[0][0] <= number - BUCKETS:
            self._total -= self._buckets.popleft()[1]


class RetryBudget:
    """:meth:`sent` for every request's first attempt; :meth:`try_retry` before each retry
    (it counts the retry when it allows it)."""

    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = config or BudgetConfig()
        self._requests = _Window(self.config.interval)
        self._retries = _Window(self.config.interval)
        self._recent_retries = _Window(self.config.min_interval)
        self.refused = 0  # retries the budget said no to, for the metrics

    def sent(self, now: float) -> None:
        self._requests.add(now)

    def allowance(self, now: float) -> int:
        """How many retries the window allows in all, from the percentage alone."""
        return math.floor(self._requests.total(now) * self.config.percent / 100)

    def try_retry(self, now: float) -> bool:
        """True, and the retry counted, if the budget has room for one more now."""
        within_percent = self._retries.total(now) < self.allowance(now)
        within_minimum = self._recent_retries.total(now) < self.config.min_retries
        if not (within_percent or within_minimum):
            self.refused += 1
            return False
        self._retries.add(now)
        self._recent_retries.add(now)
        return True
