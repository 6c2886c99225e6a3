"""Waiting for conditions that no Trio event announces (captured log lines,
pool statistics), always bounded in time."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(predicate: Callable[[], object], *, seconds: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms; raise ``trio.TooSlowError`` after ``seconds``."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the condition
            await trio.sleep(0.01)
