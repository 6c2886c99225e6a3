"""PendingWork alone: pending connections are refused past their limits, half-closed ones
make room by cutting the oldest, and established ones are never counted."""

from __future__ import annotations

import pytest

from mesh.pending import PendingLimits, PendingStatistics, PendingWork, Shed

LIMITS = PendingLimits(per_source_pending=2, pending=3, per_source_half_closed=2, half_closed=3)


def test_a_source_at_its_pending_limit_is_refused_and_others_are_not() -> None:
    work: PendingWork[int] = PendingWork(LIMITS)
    assert [work.admit("10.0.0.9") for _ in range(4)] == [True, True, False, False]
    assert work.admit("10.0.0.5")
    assert work.statistics("10.0.0.9") == PendingStatistics(2, 0, refused=2, cut=0)
    assert work.take_shed() == {Shed("refused", "10.0.0.9", "per_source"): 2}
    assert work.take_shed() == {}  # taken once


def test_everyone_together_at_the_pending_limit_is_refused() -> None:
    work: PendingWork[int] = PendingWork(LIMITS)
    assert [work.admit(f"10.0.0.{i}") for i in range(1, 5)] == [True, True, True, False]
    assert work.take_shed() == {Shed("refused", "10.0.0.4", "overall"): 1}
    assert work.statistics().pending == 3


def test_released_connections_make_room_again() -> None:
    work: PendingWork[int] = PendingWork(LIMITS)
    assert work.admit("10.0.0.9")
    assert work.admit("10.0.0.9")
    work.release("10.0.0.9")  # through to its destination, or failed
    assert work.admit("10.0.0.9")
    work.release("10.0.0.9")
    work.release("10.0.0.9")
    assert work.statistics() == PendingStatistics(0, 0, refused=0, cut=0)
    assert work.statistics("10.0.0.9").pending == 0


def test_past_its_half_closed_limit_a_source_loses_its_oldest_half_closed_connection() -> None:
    work: PendingWork[str] = PendingWork(LIMITS)
    assert work.half_closed("10.0.0.9", "first") is None
    assert work.half_closed("10.0.0.9", "second") is None
    assert work.half_closed("10.0.0.9", "third") == "first"
    assert work.half_closed("10.0.0.9", "fourth") == "second"
    assert work.statistics("10.0.0.9") == PendingStatistics(0, 2, refused=0, cut=2)
    assert work.take_shed() == {Shed("cut", "10.0.0.9", "per_source"): 2}
    work.ended("second")  # a cut connection ends later: nothing changes
    assert work.statistics("10.0.0.9").half_closed == 2


def test_past_the_overall_half_closed_limit_the_oldest_of_anyone_is_cut() -> None:
    work: PendingWork[str] = PendingWork(LIMITS)
    assert work.half_closed("10.0.0.1", "a1") is None
    assert work.half_closed("10.0.0.2", "b1") is None
    assert work.half_closed("10.0.0.3", "c1") is None
    assert work.half_closed("10.0.0.3", "c2") == "a1"
    assert work.take_shed() == {Shed("cut", "10.0.0.1", "overall"): 1}
    assert work.statistics("10.0.0.1").half_closed == 0
    assert work.statistics().half_closed == 3


def test_connections_that_end_are_forgotten_whether_they_half_closed_or_not() -> None:
    work: PendingWork[str] = PendingWork(LIMITS)
    work.ended("never-half-closed")
    work.half_closed("10.0.0.9", "a")
    work.half_closed("10.0.0.9", "b")
    work.ended("a")
    assert work.half_closed("10.0.0.9", "c") is None  # a ended: room for c
    work.ended("b")
    work.ended("c")
    assert work.statistics() == PendingStatistics(0, 0, refused=0, cut=0)


def test_established_connections_are_never_counted() -> None:
    """Admitted, released (through), then relayed without a half-close: no limit sees them."""
    work: PendingWork[int] = PendingWork(LIMITS)
    for _ in range(100):
        assert work.admit("10.0.0.9")
        work.release("10.0.0.9")
    assert work.statistics() == PendingStatistics(0, 0, refused=0, cut=0)
    for conn in range(100):
        work.ended(conn)


@pytest.mark.parametrize(
    "limits",
    [
        {"per_source_pending": 0},
        {"per_source_pending": 10, "pending": 5},
        {"per_source_half_closed": 0},
        {"per_source_half_closed": 10, "half_closed": 5},
    ],
)
def test_limits_that_make_no_sense_are_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be at least 1 and at most"):
        PendingLimits(**limits)


def test_the_defaults_hold_at_most_12288_descriptors() -> None:
    assert PendingLimits().descriptors() == 12_288
