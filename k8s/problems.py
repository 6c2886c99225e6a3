"""What translation reports about an object that does not take effect as written."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """Why an object does not take effect as written: ``reason`` is CamelCase
    (``IPConflict``), ``message`` one sentence an operator can act on, naming the other
    objects involved."""

    reason: str
    message: str
