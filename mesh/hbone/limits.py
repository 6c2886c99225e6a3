"""Bounds on what one HTTP/2 peer may make us do, sans-IO.

:class:`ResetBudget` is the rapid-reset defence (CVE-2023-44487): streams the peer
opens and resets at once cost us work (a handler, a dial) and it nothing. Each reset
by the peer takes a token from a bucket of ``burst`` tokens refilled at ``rate`` per
second (nghttp2's defaults: 1,000 and 33/s); a peer that empties it gets GOAWAY
``ENHANCE_YOUR_CALM`` and the connection is closed. Healthy clients that reset now
and then never come near it.
"""

from __future__ import annotations


class ResetBudget:
    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Spend one token for a reset by the peer; False when none is left."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    @property
    def tokens(self) -> float:
        return self._tokens
