"""A latency-aware balancer: power of two choices over a peak-EWMA of each endpoint's
latency (Finagle's and Linkerd's), so an endpoint that turns slow gets less traffic at
once and gets its share back as it recovers.

Each endpoint keeps an exponentially weighted moving average of its answers' latency
(time constant ``decay``, 2 s) that jumps to any sample above it (the peak) and moves
towards lower samples. An endpoint that gets no answer for longer than ``grace`` (1 s)
sees its estimate decay towards zero with the same time constant, so one that was slow
is tried again and, once well, gets its share back within seconds (a 300 ms estimate
is below a 10 ms one's after about 8 s without traffic), where Linkerd's 10 s decay
takes half a minute. The cost of an endpoint is that
average times one more than its requests in flight; of two endpoints drawn at random
the cheaper gets the request. An endpoint with no sample yet starts at ``default_rtt``.

Pure: the caller passes ``now`` and the random generator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

DEFAULT_RTT: Final = 0.030  # seconds, for an endpoint never measured (Linkerd's)
DECAY: Final = 2.0  # seconds
GRACE: Final = 1.0  # seconds without an answer before the estimate starts to decay

T = TypeVar("T", bound=Hashable)


@dataclass
class _Latency:
    ewma: float
    at: float
    in_flight: int = 0


class PeakEwma:
    def __init__(
        self,
        *,
        decay: float = DECAY,
        grace: float = GRACE,
        default_rtt: float = DEFAULT_RTT,
        rng: random.Random | None = None,
    ) -> None:
        self.decay = decay
        self.grace = grace
        self.default_rtt = default_rtt
        self._rng = rng or random.Random()
        self._state: dict[Hashable, _Latency] = {}

    def cost(self, key: Hashable, now: float) -> float:
        state = self._seen(key, now)
        return self._decayed(state, now) * (state.in_flight + 1)

    def latency(self, key: Hashable, now: float) -> float:
        """The endpoint's current average latency (seconds)."""
        return self._decayed(self._seen(key, now), now)

    def _seen(self, key: Hashable, now: float) -> _Latency:
        """``key``'s state; a new endpoint starts at ``default_rtt``, which decays like
        any other estimate, so it is tried before long even beside fast ones."""
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = _Latency(self.default_rtt, now)
        return state

    def pick(self, keys: Sequence[T], now: float) -> T | None:
        if not keys:
            return None
        if len(keys) == 1:
            return keys[0]
        a, b = self._rng.sample(list(keys), 2)
        return a if self.cost(a, now) <= self.cost(b, now) else b

    def started(self, key: Hashable, now: float) -> None:
        self._seen(key, now).in_flight += 1

    def finished(self, key: Hashable, latency: float, now: float) -> None:
        """The request to ``key`` that took ``latency`` seconds has its answer."""
        state = self._seen(key, now)
        state.in_flight = max(0, state.in_flight - 1)
        current = self._decayed(state, now)
        if latency > current:
            state.ewma = latency  # the peak: slow is believed at once
        else:  # the older the last sample, the more this one counts
            weight = math.exp(-max(0.0, now - state.at) / self.decay)
            state.ewma = current * weight + latency * (1 - weight)
        state.at = now

    def forget(self, keep: Sequence[Hashable]) -> None:
        wanted = set(keep)
        for key in [k for k, s in self._state.items() if k not in wanted and not s.in_flight]:
            del self._state[key]

    def _decayed(self, state: _Latency, now: float) -> float:
        """The average as it stands at ``now``: past ``grace`` without an answer it decays
        towards zero, so an endpoint that was slow and has been left alone is tried again."""
        idle = now - state.at - self.grace
        return state.ewma if idle <= 0 else state.ewma * math.exp(-idle / self.decay)
