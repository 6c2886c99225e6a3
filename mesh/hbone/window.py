"""HTTP/2 receive flow control as a sans-IO object (no I/O, no Trio).

One :class:`ReceiveWindow` per stream and one per connection, as h2's
``WindowManager``: it counts what the peer may still send, and turns bytes
the *consumer has read* into WINDOW_UPDATE increments. Bytes that merely
arrived are never credited (hypercorn acknowledges data when it is queued,
which removes backpressure); so what waits in a buffer is bounded by the
window.

Credit goes back in batches of at least half the window, so a bulk transfer
costs one WINDOW_UPDATE per half window, not one per DATA frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.hbone.frames import MAX_WINDOW


@dataclass(frozen=True)
class WindowStatistics:
    size: int  # the window we advertise when nothing is outstanding
    available: int  # what the peer may still send before it must wait
    unacked: int  # consumed, not yet returned to the peer

    @property
    def outstanding(self) -> int:
        """Received and not yet consumed (buffered, or in flight to us)."""
        return self.size - self.available - self.unacked


class WindowOverflow(Exception):
    """The peer sent more than the window allowed: a FLOW_CONTROL_ERROR."""


class ReceiveWindow:
    """The receive side of one HTTP/2 flow-control window.

    ``received(n)`` when a DATA frame of flow-controlled length ``n`` arrives;
    ``consumed(n)`` when the consumer took ``n`` of those bytes, which returns
    the WINDOW_UPDATE increment to send now (0: nothing yet).
    """

    __slots__ = ("_threshold", "available", "size", "unacked")

    def __init__(self, size: int) -> None:
        if not 1 <= size <= MAX_WINDOW:
            raise ValueError(f"window size {size} out of range")
        self.size = size
        self.available = size
        self.unacked = 0
        self._threshold = max(1, size // 2)

    def received(self, n: int) -> None:
        """``n`` flow-controlled bytes arrived; raise :class:`WindowOverflow` past the window."""
        self.available -= n
        if self.available < 0:
            raise WindowOverflow(f"peer sent {-self.available} bytes beyond the window")

    def consumed(self, n: int) -> int:
        """``n`` received bytes were taken by the consumer: the increment to send now, or 0."""
        unacked = self.unacked + n
        if unacked >= self._threshold:
            self.unacked = 0
            self.available += unacked
            return unacked
        self.unacked = unacked
        return 0

    def statistics(self) -> WindowStatistics:
        return WindowStatistics(self.size, self.available, self.unacked)
