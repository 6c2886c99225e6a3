"""What translation reports about an object that does not take effect as written."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.model_l7 import ParentRef


@dataclass(frozen=True)
class Problem:
    """Why an object does not take effect as written: ``reason`` is CamelCase
    (``IPConflict``), ``message`` one sentence an operator can act on, naming the other
    objects involved. ``parent``: of a route, the parentRef it is about (None: the
    whole route)."""

    reason: str
    message: str
    parent: ParentRef | None = None
