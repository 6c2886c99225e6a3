"""The receive window alone: credit only for what the consumer took, in batches."""

from __future__ import annotations

import pytest

from mesh.hbone.window import ReceiveWindow, WindowOverflow


def test_credit_waits_for_half_a_window_of_consumed_bytes() -> None:
    window = ReceiveWindow(1000)
    window.received(600)
    assert window.consumed(400) == 0  # below half: batched
    assert window.statistics().unacked == 400
    assert window.consumed(100) == 500  # half reached: everything owed goes back
    stats = window.statistics()
    assert (stats.available, stats.unacked, stats.outstanding) == (900, 0, 100)


def test_received_bytes_are_never_credited_until_consumed() -> None:
    window = ReceiveWindow(1000)
    window.received(1000)
    stats = window.statistics()
    assert (stats.available, stats.outstanding) == (0, 1000)
    with pytest.raises(WindowOverflow):
        window.received(1)


def test_everything_consumed_restores_the_window() -> None:
    window = ReceiveWindow(65_535)
    increments = 0
    for _ in range(10):
        window.received(10_000)
        increments += window.consumed(10_000)
    stats = window.statistics()
    assert stats.available + stats.unacked == 65_535
    assert increments == 100_000 - stats.unacked  # all but what is still batched
    assert stats.outstanding == 0


@pytest.mark.parametrize("size", [0, 2**31])
def test_window_size_must_be_valid(size: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ReceiveWindow(size)
