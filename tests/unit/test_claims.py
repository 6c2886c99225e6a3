"""Claims: who keeps an address several objects claim, and what a settle reports."""

from __future__ import annotations

import math

from k8s.claims import Claims, Contest, rank

EARLY, LATE = "2026-12-01T10:00:00Z", "2026-12-01T10:00:05Z"


def test_rank_orders_by_creation_time_then_namespace_and_name() -> None:
    assert rank(EARLY, "b", "x") < rank(LATE, "a", "a")
    assert rank(EARLY, "a", "y") < rank(EARLY, "b", "x")
    assert rank(LATE, "z", "z") < rank("", "a", "a")  # unknown comes last
    assert rank("not a time", "a", "a")[0] == math.inf


def test_the_first_created_holds_and_settle_says_who_moved() -> None:
    claims: Claims[str] = Claims()
    claims.claim("late", "10.0.0.1", rank(LATE, "ns", "late"))
    assert not claims.holds("late")  # nothing is decided before settle
    assert claims.settle() == (set(), {"late"})  # it holds the address; no contest
    claims.claim("early", "10.0.0.1", rank(EARLY, "ns", "early"))
    affected, moved = claims.settle()
    assert (affected, moved) == ({"early", "late"}, {"early", "late"})
    assert claims.holds("early")
    assert not claims.holds("late")
    assert claims.contest("late") == Contest("10.0.0.1", "early", ("late",), frozenset({"late"}))
    assert claims.contest("early") == claims.contest("late")


def test_releasing_an_address_ends_the_contest_for_both() -> None:
    claims: Claims[str] = Claims()
    claims.claim("a", "10.0.0.1", rank(EARLY, "ns", "a"))
    claims.claim("b", "10.0.0.1", rank(LATE, "ns", "b"))
    claims.settle()
    claims.claim("a", None, rank("", "ns", "a"))
    affected, moved = claims.settle()
    assert (affected, moved) == ({"a", "b"}, {"a", "b"})
    assert claims.holds("b")
    assert claims.contest("b") is None


def test_a_claim_elsewhere_leaves_the_other_addresses_alone() -> None:
    claims: Claims[str] = Claims()
    claims.claim("a", "10.0.0.1", rank(EARLY, "ns", "a"))
    claims.claim("b", "10.0.0.2", rank(EARLY, "ns", "b"))
    claims.settle()
    claims.claim("c", "10.0.0.3", rank(EARLY, "ns", "c"))
    assert claims.settle() == (set(), {"c"})
    claims.claim("c", "10.0.0.3", rank(EARLY, "ns", "c"))  # the same claim again
    assert claims.settle() == (set(), set())
