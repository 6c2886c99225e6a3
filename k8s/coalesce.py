"""Coalescing changes: many changes that arrive close together are handled as one batch.

:class:`Coalescer` takes keyed changes from any number of producers without blocking
(:meth:`~Coalescer.put`) and hands them to one consumer in batches
(:meth:`~Coalescer.batches`): a batch is due ``window`` seconds after its first change
arrived, and holds every change put until then, the latest per key. The buffer is
bounded by the number of distinct keys (one pending change per key), never by how fast
changes come. The control plane uses it with keys :data:`k8s.translate.ObjectRef` and
values the new object, or None for a removal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CoalescerStatistics:
    pending: int  # changes waiting for the next batch (distinct keys)
    received: int  # changes put, in all
    batches: int  # batches handed out


class Coalescer(Generic[K, V]):
    """Keyed changes in, merged batches out, at most one batch per ``window``."""

    def __init__(self) -> None:
        self._pending: dict[K, V] = {}
        self._first_at = 0.0  # when the oldest pending change arrived (Trio's clock)
        self._wakeup = trio.Event()
        self._closed = trio.Event()
        self._consuming = False
        self._received = 0
        self._batches = 0

    def put(self, key: K, value: V) -> None:
        """Add a change; it replaces a pending change of the same key. Never blocks."""
        if self._closed.is_set():
            raise trio.ClosedResourceError("the coalescer is closed")
        if not self._pending:
            self._first_at = trio.current_time()
        self._pending[key] = value
        self._received += 1
        self._wakeup.set()

    def close(self) -> None:
        """No more changes: :meth:`batches` hands out what is pending at once, then ends."""
        self._closed.set()
        self._wakeup.set()

    def statistics(self) -> CoalescerStatistics:
        return CoalescerStatistics(len(self._pending), self._received, self._batches)

    async def batches(self, window: float) -> AsyncIterator[dict[K, V]]:
        """Merged batches: each is handed out ``window`` seconds after its first change
        arrived, with every change put until then. Ends after :meth:`close`. One consumer
        at a time; while it handles a batch, the next one gathers."""
        if self._consuming:
            raise trio.BusyResourceError("another task is already taking batches")
        self._consuming = True
        try:
            while True:
                while not self._pending and not self._closed.is_set():
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                with trio.move_on_at(self._first_at + window):
                    await self._closed.wait()
                if not self._pending:
                    return  # closed, nothing left
                batch, self._pending = self._pending, {}
                self._batches += 1
                yield batch
        finally:
            self._consuming = False
