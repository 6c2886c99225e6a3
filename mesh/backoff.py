"""The one retry schedule every part uses: exponential steps, capped, with optional jitter.

The ``n``-th failure in a row waits step ``c = initial * multiplier**(n-1)``, at most
``maximum``. With ``jitter`` (the default) the wait is drawn uniformly from
``[c/2, c]`` ("equal jitter": never less than half a step), so proxies that lost
the same peer do not come back in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True

    def step(self, failures: int) -> float:
        """The capped step after the ``failures``-th failure in a row (counted from 1)."""
        return float(min(self.initial * self.multiplier ** max(0, failures - 1), self.maximum))

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        step = self.step(failures)
        return random.uniform(step / 2, step) if self.jitter else step

    def delays(self) -> Callable[[], float]:
        """A function returning the next delay of one run of failures."""
        failures = 0

        def next_delay() -> float:
            nonlocal failures
            failures += 1
            return self.delay(failures)

        return next_delay
