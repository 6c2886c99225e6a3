"""Freed heap goes back to the OS (glibc's malloc_trim), so RSS falls after a burst."""

from __future__ import annotations

import ctypes.util
import gc

import pytest

from mesh.memory import trim_heap


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library found")
def test_trim_returns_a_freed_burst_to_the_os() -> None:
    trim_heap()
    before = _rss_kib()
    # Many medium blocks (under glibc's mmap threshold), as a burst of connections
    # leaves them, with small objects made after them that stay.
    burst = [bytearray(64 * 1024) for _ in range(1500)]  # about 96 MiB
    survivors = [bytearray(100) for _ in range(1500)]
    peak = _rss_kib()
    del burst
    gc.collect()
    held = _rss_kib()  # free() alone gives little or nothing back
    assert trim_heap() is True
    after = _rss_kib()
    assert len(survivors) == 1500
    assert peak - before > 80 * 1024
    assert after - before < 16 * 1024, f"RSS {before} -> {peak} -> {held} -> {after} KiB"
