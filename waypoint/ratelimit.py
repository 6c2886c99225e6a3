"""Local rate limiting: a token bucket per route (or per route and caller identity), as
Envoy's local rate limit filter keeps one.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens a second; each request
takes one or is refused (``429``, flag ``RL``). :class:`Decision` carries what the
``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` headers say
(draft-ietf-httpapi-ratelimit-headers, as Envoy writes them). :class:`Buckets` keeps one
bucket per key, at most ``max_keys`` of them (the least recently used go first, and a
bucket that refilled completely is the same as a new one), so a caller that invents
identities cannot grow the waypoint's memory.

Pure: the caller passes ``now``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

MAX_KEYS: Final = 10_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # the burst: what a full bucket holds
    remaining: int  # whole tokens left after this request
    reset: float  # seconds until the bucket is full again

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-limit", str(self.limit)),
            ("x-ratelimit-remaining", str(self.remaining)),
            ("x-ratelimit-reset", str(math.ceil(self.reset))),
        ]


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs a rate above 0 and a burst of 1 or more"
                             f" (got rate {rate}, burst {burst})")  # fmt: skip
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> Decision:
        self._refill(now)
        allowed = self._tokens >= 1.0
        if allowed:
            self._tokens -= 1.0
        reset = (self.burst - self._tokens) / self.rate
        return Decision(allowed, self.burst, int(self._tokens), reset)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self.burst

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now


class Buckets:
    """One :class:`TokenBucket` per key, each ``rate``/``burst``."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = MAX_KEYS) -> None:
        TokenBucket(rate, burst, 0.0)  # the same checks, at once
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: object, now: float) -> Decision:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            self._evict(now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def _evict(self, now: float) -> None:
        """Over the bound: drop full buckets (as good as new), else the least recent."""
        while len(self._buckets) > self.max_keys:
            oldest, bucket = next(iter(self._buckets.items()))
            if not bucket.full(now):
                full = next((k for k, b in self._buckets.items() if b.full(now)), None)
                oldest = full if full is not None else oldest
            del self._buckets[oldest]
