"""Log lines that a flood cannot multiply (sans-IO).

A :class:`LogLimiter` lets the first event of a kind (its key: a rule, a reason)
be logged at once and counts the ones that follow within ``window`` seconds. The
count is reported once, as ``suppressed=N``: either on the next line of that kind
after the window (that event and the N before it), or by :meth:`LogLimiter.due`,
which the owner asks every window, for a summary line (the N held back). Keys are
the few kinds of an event, never a source address, so the table stays small.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

Fields = dict[str, Any]


@dataclass
class _Window:
    start: float
    suppressed: int = 0
    last: Fields = field(default_factory=dict)


class LogLimiter:
    """One line per key per ``window`` seconds, and a count of the rest."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._windows: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable, now: float, **fields: Any) -> Fields | None:
        """The fields to log now (with ``suppressed=N`` if lines of this key were held
        back since the last one), or None: counted, to be reported later."""
        current = self._windows.get(key)
        if current is not None and now - current.start < self.window:
            current.suppressed += 1
            current.last = fields
            return None
        self._windows[key] = _Window(now)
        if current is not None and current.suppressed:
            return {**fields, "suppressed": current.suppressed}
        return fields

    def due(self, now: float) -> list[tuple[Hashable, int, Fields]]:
        """The windows that have ended with lines held back: each key, how many, and the
        last held event's fields (for its summary line). Ended windows are forgotten."""
        summaries = []
        for key, current in list(self._windows.items()):
            if now - current.start >= self.window:
                del self._windows[key]
                if current.suppressed:
                    summaries.append((key, current.suppressed, current.last))
        return summaries
