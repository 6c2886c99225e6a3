"""The Lease decisions of :class:`k8s.leader.Elector`, sans-IO: when a replica may take
the Lease, and what it writes."""

from __future__ import annotations

import pytest

from k8s.leader import Elector, LeaseConfig, LeaseRecord

WALL = "2026-12-06T21:00:00.000000Z"


def held(holder: str, version: str = "1", duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, "2026-12-06T20:00:00.000000Z", WALL, 3, version)


def test_no_lease_or_a_released_one_may_be_taken_at_once() -> None:
    elector = Elector("a", 15.0)
    elector.observe(None, now=100.0)
    assert elector.may_acquire(100.0)
    assert elector.desired(WALL)["leaseTransitions"] == 0
    elector.observe(held(""), now=100.0)
    assert elector.may_acquire(100.0)
    assert elector.desired(WALL)["leaseTransitions"] == 4  # a new holder


def test_another_holders_lease_is_taken_only_after_a_lease_duration_unchanged() -> None:
    elector = Elector("a", 15.0)
    elector.observe(held("b", "1"), now=100.0)
    assert not elector.may_acquire(114.9)
    elector.observe(held("b", "2"), now=110.0)  # b renewed: the wait starts again
    assert not elector.may_acquire(124.9)
    elector.observe(held("b", "2"), now=120.0)  # unchanged: observed at 110 still
    assert elector.may_acquire(125.0)
    spec = elector.desired(WALL)
    assert spec["holderIdentity"] == "a"
    assert (spec["acquireTime"], spec["renewTime"], spec["leaseTransitions"]) == (WALL, WALL, 4)


def test_the_records_own_duration_counts() -> None:
    elector = Elector("a", 15.0)
    elector.observe(held("b", duration=1), now=100.0)  # a released-for-takeover record
    assert elector.may_acquire(101.0)


def test_renewing_keeps_the_acquire_time_and_the_transitions() -> None:
    elector = Elector("a", 15.0)
    elector.observe(held("a"), now=100.0)
    assert elector.holding
    assert elector.may_acquire(100.0)
    spec = elector.desired(WALL)
    assert spec["acquireTime"] == "2026-12-06T20:00:00.000000Z"
    assert (spec["renewTime"], spec["leaseTransitions"]) == (WALL, 3)


def test_released_names_no_holder_and_lets_a_peer_take_it_at_once() -> None:
    elector = Elector("a", 15.0)
    elector.observe(held("a"), now=100.0)
    spec = elector.released(WALL)
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == ("", 1)
    peer = Elector("b", 15.0)
    peer.observe(LeaseRecord.from_json({"spec": spec, "metadata": {"resourceVersion": "9"}}), 0.0)
    assert peer.may_acquire(0.0)


def test_the_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseConfig(identity="a", lease_duration=2.0, renew_deadline=3.0, retry_period=1.0)
