"""Keep-alive HTTP/1.1 connections that wait too long for their next request, ended.

A connection with no request for :data:`IDLE_SECONDS` is closed (Envoy's
``idle_timeout`` on the downstream connection, an hour there; five minutes here, as
before this module). Moving a cancel scope's deadline twice a request (armed while a
request is awaited, off while one is served) cost 2.7 µs a request on the hot path;
here a session notes when it began waiting (:meth:`IdleConnections.waiting`, a
dictionary write) and stops (:meth:`IdleConnections.serving`), and one task for the
whole waypoint looks every :data:`CHECK_SECONDS` for those waiting longer than
:data:`IDLE_SECONDS` and cancels their scope. A connection therefore ends between
``IDLE_SECONDS`` and ``IDLE_SECONDS + CHECK_SECONDS`` after its last request.
"""

from __future__ import annotations

import time
from typing import Final

import structlog
import trio

log = structlog.get_logger("waypoint")

IDLE_SECONDS: Final = 300.0  # a keep-alive connection with no request
CHECK_SECONDS: Final = 5.0


class IdleConnections:
    """The waypoint's keep-alive connections waiting for a request, each by its scope;
    the watching task starts in ``nursery`` with the first one."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        idle_seconds: float = IDLE_SECONDS,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self._nursery = nursery
        self.idle_seconds = idle_seconds
        self.check_seconds = check_seconds
        self._waiting: dict[trio.CancelScope, float] = {}
        self._watching = False

    def waiting(self, scope: trio.CancelScope) -> None:
        """The connection of ``scope`` waits for its next request from now."""
        self._waiting[scope] = time.monotonic()
        if not self._watching:
            self._watching = True
            self._nursery.start_soon(self._watch)

    def serving(self, scope: trio.CancelScope) -> None:
        """It has a request (or is done): it is not idle."""
        self._waiting.pop(scope, None)

    def __len__(self) -> int:
        return len(self._waiting)

    async def _watch(self) -> None:
        """Every ``check_seconds`` while any connection waits, end those idle too long."""
        try:
            while self._waiting:
                await trio.sleep(self.check_seconds)
                self.expire(time.monotonic())
        finally:
            self._watching = False

    def expire(self, now: float) -> int:
        """End the connections waiting since before ``now - idle_seconds``: how many."""
        late = [s for s, since in self._waiting.items() if now - since >= self.idle_seconds]
        for scope in late:
            del self._waiting[scope]
            scope.cancel()
        if late:
            log.debug("idle_connections_closed", count=len(late), idle_seconds=self.idle_seconds)
        return len(late)
