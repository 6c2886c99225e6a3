"""The waypoint's resilience state machines, without sockets or clocks: retry budgets,
outlier ejection, token buckets and the peak-EWMA balancer, each driven through time
given explicitly, with what an operator would observe asserted (how many retries went
out, which endpoint gets traffic, how many requests pass)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from waypoint.budget import BudgetConfig, RetryBudget
from waypoint.ewma import PeakEwma
from waypoint.outlier import CONNECT_FAILURE, OutlierConfig, OutlierDetector
from waypoint.ratelimit import Buckets, TokenBucket

# ---- retry budget -------------------------------------------------------------------


def test_retries_stay_within_the_percentage_of_requests() -> None:
    budget = RetryBudget(BudgetConfig(percent=20, min_retries=0))
    for i in range(100):
        budget.sent(i * 0.01)
    allowed = sum(budget.try_retry(1.0) for _ in range(50))
    assert allowed == 20
    assert budget.refused == 30


def test_the_window_slides_and_old_requests_stop_paying_for_retries() -> None:
    budget = RetryBudget(BudgetConfig(percent=20, interval=10, min_retries=0))
    for i in range(100):
        budget.sent(i * 0.01)  # all in the first second
    assert budget.allowance(5.0) == 20
    assert budget.allowance(11.5) == 0  # ten seconds on, they are out of the window
    assert not budget.try_retry(11.5)


def test_a_quiet_backend_still_gets_the_minimum_retry_rate() -> None:
    budget = RetryBudget(BudgetConfig(percent=20, min_retries=10, min_interval=1.0))
    budget.sent(0.0)
    assert sum(budget.try_retry(0.5) for _ in range(15)) == 10
    assert sum(budget.try_retry(1.6) for _ in range(15)) == 10  # a new second, ten more


def test_a_backend_failing_everything_sees_no_retry_storm() -> None:
    """1,000 requests/s for 10 s, every attempt failing, 3 attempts each: the retries
    that go out are bounded by the budget, not by the attempts."""
    config = BudgetConfig(percent=20, interval=10, min_retries=10, min_interval=1)
    budget = RetryBudget(config)
    retries = requests = 0
    for i in range(10_000):
        now = i / 1000
        budget.sent(now)
        requests += 1
        for _ in range(2):  # the second and third attempts
            if not budget.try_retry(now):
                break
            retries += 1
    assert retries <= requests * 0.20 + config.min_retries * 10
    assert retries >= requests * 0.19  # and the budget is used, not starved


@pytest.mark.parametrize(
    "kwargs", [{"percent": 101}, {"percent": -1}, {"interval": 0}, {"min_retries": -1}]
)
def test_a_budget_that_cannot_be_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case its own message
        BudgetConfig(**kwargs)  # type: ignore[arg-type]


# ---- outlier detection ----------------------------------------------------------------

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


def test_an_endpoint_failing_everything_is_ejected_and_comes_back() -> None:
    detector = OutlierDetector(OutlierConfig(consecutive_5xx=5, base_ejection=30))
    ejected = [detector.result(A, 500, 0.0, pool=3) for _ in range(5)]
    assert ejected == [False, False, False, False, True]
    assert detector.available([A, B, C], 1.0) == [B, C]
    assert detector.available([A, B, C], 29.9) == [B, C]
    assert detector.available([A, B, C], 30.0) == [A, B, C]


def test_a_relapse_is_ejected_for_longer_and_a_healthy_endpoint_is_forgiven() -> None:
    config = OutlierConfig(consecutive_5xx=2, base_ejection=30, interval=10, max_ejection=300)
    detector = OutlierDetector(config)
    for _ in range(2):
        detector.result(A, 503, 0.0, pool=3)
    for _ in range(2):  # back at 30 s, failing again at once
        detector.result(A, 503, 31.0, pool=3)
    assert detector.is_ejected(A, 31.0 + 59.9)  # 2 x 30 s this time
    assert not detector.is_ejected(A, 31.0 + 60.0)
    assert detector.ejection_multiplier(A, 91.0) == 2
    assert detector.ejection_multiplier(A, 91.0 + 10.0) == 1  # one healthy interval
    assert detector.ejection_multiplier(A, 91.0 + 25.0) == 0


def test_successes_in_between_reset_the_run() -> None:
    detector = OutlierDetector(OutlierConfig(consecutive_5xx=3))
    for status in (500, 500, 200, 500, 500, 404, 500, 500):
        assert not detector.result(A, status, 0.0, pool=3)
    assert detector.available([A], 0.0) == [A]


def test_gateway_errors_count_only_502_503_504_and_failed_connections() -> None:
    detector = OutlierDetector(OutlierConfig(consecutive_5xx=0, consecutive_gateway=3))
    for status in (502, 503, 500):  # 500 is not a gateway error: the run starts again
        assert not detector.result(A, status, 0.0, pool=3)
    assert [detector.result(A, s, 0.0, pool=3) for s in (504, CONNECT_FAILURE, 502)] == [
        False, False, True,
    ]  # fmt: skip


def test_the_share_of_ejected_endpoints_is_bounded_but_one_may_always_go() -> None:
    detector = OutlierDetector(OutlierConfig(consecutive_5xx=1, max_ejection_percent=10))
    assert detector.result(A, 500, 0.0, pool=3)  # one, though 1 of 3 is over 10%
    assert not detector.result(B, 500, 0.0, pool=3)
    assert detector.available([A, B, C], 0.0) == [B, C]
    everyone = OutlierDetector(OutlierConfig(consecutive_5xx=1, max_ejection_percent=100))
    for key in (A, B, C):
        assert everyone.result(key, 500, 0.0, pool=3)
    assert everyone.available([A, B, C], 0.0) == []  # what the waypoint answers 503 UH to


def test_endpoints_that_left_are_forgotten() -> None:
    detector = OutlierDetector(OutlierConfig(consecutive_5xx=1))
    detector.result(A, 500, 0.0, pool=2)
    detector.forget([B])
    assert not detector.is_ejected(A, 0.0)


# ---- token buckets --------------------------------------------------------------------


def test_100_per_second_with_a_burst_of_20_under_400_per_second() -> None:
    bucket = TokenBucket(rate=100, burst=20, now=0.0)
    passed = sum(bucket.take(i / 400).allowed for i in range(4000))  # 10 s
    assert 950 <= passed <= 1250
    assert passed == pytest.approx(20 + 100 * 10, abs=2)


def test_the_headers_say_the_limit_what_is_left_and_when_it_is_full() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    first = bucket.take(0.0)
    assert first.headers() == [("x-ratelimit-limit", "5"), ("x-ratelimit-remaining", "4"),
                               ("x-ratelimit-reset", "1")]  # fmt: skip
    for _ in range(4):
        bucket.take(0.0)
    refused = bucket.take(0.0)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.reset == pytest.approx(0.5)


def test_buckets_per_caller_are_separate_and_bounded() -> None:
    buckets = Buckets(rate=1, burst=1, max_keys=3)
    assert buckets.take("alice", 0.0).allowed
    assert not buckets.take("alice", 0.0).allowed
    assert buckets.take("bob", 0.0).allowed  # bob's own bucket
    for i in range(100):  # a caller inventing identities
        buckets.take(f"mallory-{i}", 0.0)
    assert len(buckets) == 3


def test_a_bucket_that_cannot_be_is_refused() -> None:
    with pytest.raises(ValueError, match="rate above 0"):
        TokenBucket(rate=0, burst=1, now=0.0)


# ---- peak EWMA --------------------------------------------------------------------------


def shares(balancer: PeakEwma, latency: dict[str, float], start: float, n: int) -> Counter[str]:
    """``n`` sequential requests, 10 ms apart, each answered after its endpoint's
    latency; how many each endpoint got."""
    got: Counter[str] = Counter()
    now = start
    for _ in range(n):
        key = balancer.pick(sorted(latency), now)
        assert key is not None
        balancer.started(key, now)
        balancer.finished(key, latency[key], now + latency[key])
        got[key] += 1
        now += 0.01
    return got


def test_the_slow_endpoint_gets_the_smallest_share_and_recovers() -> None:
    balancer = PeakEwma(rng=random.Random(7))
    slow = {"a": 0.005, "b": 0.005, "c": 0.055}  # c is 50 ms slower
    got = shares(balancer, slow, 0.0, 3000)
    assert got["c"] < got["a"] / 2
    assert got["c"] < got["b"] / 2
    healed = {"a": 0.005, "b": 0.005, "c": 0.005}
    later = shares(balancer, healed, 60.0, 3000)  # c recovered
    assert later["c"] > 3000 / 3 * 0.7


def test_requests_in_flight_raise_the_cost() -> None:
    balancer = PeakEwma(rng=random.Random(1))
    balancer.finished("a", 0.01, 0.0)
    balancer.finished("b", 0.01, 0.0)
    for _ in range(5):
        balancer.started("a", 0.0)
    assert balancer.cost("a", 0.0) > balancer.cost("b", 0.0)
    assert balancer.pick(["a", "b"], 0.0) == "b"


def test_a_peak_is_believed_at_once_and_forgotten_with_time() -> None:
    balancer = PeakEwma(decay=10.0)
    balancer.finished("a", 0.010, 0.0)
    balancer.finished("a", 0.500, 0.1)
    assert balancer.latency("a", 0.1) == pytest.approx(0.5)
    assert balancer.latency("a", 30.1) < 0.05  # three time constants later
