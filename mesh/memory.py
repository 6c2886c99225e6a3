"""Giving freed heap back to the operating system.

After a burst (a bulk transfer through 256 KiB buffers, thousands of
connections opened and closed), glibc keeps the freed memory in its arenas:
the process's RSS stays at the burst's peak although Python no longer uses
it. :func:`serve_heap_trimmer` asks glibc (``malloc_trim``) to return it
every so often. Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import cast

import trio

TRIM_INTERVAL = 10.0  # seconds between two trims; one costs well under a millisecond when idle


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return cast(Callable[[int], int], ctypes.CDLL(name).malloc_trim)
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Return free heap memory to the OS now; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def serve_heap_trimmer(interval: float = TRIM_INTERVAL) -> None:
    """Trim the heap every ``interval`` seconds until cancelled."""
    if _TRIM is None:
        return
    while True:
        await trio.sleep(interval)
        trim_heap()
