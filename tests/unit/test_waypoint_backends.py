"""A backend Service's state at the waypoint (``waypoint.backends``) under its
DestinationRule: the balancers, outlier ejection, circuit breaking and
``maxRequestsPerConnection``. No sockets: requests are simulated on Trio's clock
(``autojump_clock``), each answer reported as the sessions report it."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from mesh.identity import SpiffeId
from mesh.model_traffic import ConnectionPool, DestinationRule, LoadBalancer, OutlierDetection
from tests.builders import service, snapshot
from waypoint.backends import NO_ANSWER, Backend, Backends, Overflow
from waypoint.outlier import CONNECT_FAILURE
from waypoint.upstream import Balancer, Target

A, B, C = (Target(f"10.0.0.{i}", 8080, SpiffeId("cluster.local", "default", "web"), f"default/w{i}")
           for i in (1, 2, 3))  # fmt: skip
TARGETS = [A, B, C]


def backend(
    lb: LoadBalancer = "LEAST_REQUEST",
    *,
    pool: ConnectionPool | None = None,
    outlier: OutlierDetection | None = None,
    seed: int = 7,
) -> Backend:
    rule = DestinationRule("web", "default", "web", "default/web", lb, pool, outlier)
    return Backend("default/web", rule, None, Balancer(random.Random(seed)), random.Random(seed))


async def serve(
    web: Backend, latency: dict[Target, float], requests: int, gap: float
) -> Counter[Target]:
    """Send ``requests``, one every ``gap`` seconds, each taking its endpoint's latency;
    how many each endpoint got."""
    got: Counter[Target] = Counter()

    async def one() -> None:
        target = web.pick(TARGETS)
        assert target is not None
        got[target] += 1
        started = web.started(target)
        await trio.sleep(latency[target])
        web.finished(target, 200, started, len(TARGETS))

    async with trio.open_nursery() as nursery:
        for _ in range(requests):
            nursery.start_soon(one)
            await trio.sleep(gap)
    return got


async def test_round_robin_takes_turns(autojump_clock: trio.testing.MockClock) -> None:
    web = backend("ROUND_ROBIN")
    picks = [web.pick(TARGETS) for _ in range(9)]
    assert picks == [A, B, C] * 3


async def test_random_spreads_over_every_endpoint(autojump_clock: trio.testing.MockClock) -> None:
    web = backend("RANDOM")
    got = Counter(web.pick(TARGETS) for _ in range(3_000))
    assert set(got) == {A, B, C}
    assert all(900 <= n <= 1_100 for n in got.values())


async def test_a_retry_goes_elsewhere_under_every_balancer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for lb in ("LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", "PEAK_EWMA"):
        web = backend(lb)
        for _ in range(20):
            assert web.pick(TARGETS, avoid=[A, B]) == C


async def test_a_slow_endpoint_gets_less_from_least_request_and_least_from_peak_ewma(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One endpoint 50 ms slower than two others, 600 requests at 100/s: round robin gives
    it its third; least request less; the EWMA balancer the least of all."""
    latency = {A: 0.010, B: 0.010, C: 0.060}
    shares = {}
    for lb in ("ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA"):
        got = await serve(backend(lb), latency, 600, 0.010)
        shares[lb] = got[C] / 600
    assert shares["ROUND_ROBIN"] == pytest.approx(1 / 3, abs=0.01)
    assert shares["LEAST_REQUEST"] < shares["ROUND_ROBIN"]
    assert shares["PEAK_EWMA"] < shares["LEAST_REQUEST"]


async def test_an_endpoint_that_recovers_gets_its_share_back_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """C answers in 300 ms for 3 s, then in 10 ms like the others: 10 s later it has its
    third again (the estimate of an endpoint left alone decays after a second)."""
    web = backend("PEAK_EWMA")
    slow = await serve(web, {A: 0.010, B: 0.010, C: 0.300}, 300, 0.010)
    assert slow[C] < 300 * 0.1
    well = {A: 0.010, B: 0.010, C: 0.010}
    await serve(web, well, 1_000, 0.010)  # C is well again: 10 s
    recovered = await serve(web, well, 300, 0.010)
    assert recovered[C] / 300 > 0.25


async def test_an_endpoint_failing_everything_is_ejected_then_back_then_longer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outlier = OutlierDetection(consecutive_5xx=3, interval_ms=1_000, base_ejection_ms=10_000,
                               max_ejection_percent=50)  # fmt: skip
    web = backend("ROUND_ROBIN", outlier=outlier)
    for _ in range(3):
        web.finished(C, 500, web.started(C), 3)
    assert {web.pick(TARGETS) for _ in range(30)} == {A, B}  # out for 10 s
    await trio.sleep(10.5)
    assert C in {web.pick(TARGETS) for _ in range(3)}  # back
    for _ in range(3):  # relapses at once: out for twice as long
        web.finished(C, 503, web.started(C), 3)
    await trio.sleep(10.5)
    assert C not in {web.pick(TARGETS) for _ in range(30)}
    await trio.sleep(10)
    assert C in {web.pick(TARGETS) for _ in range(3)}


async def test_gateway_errors_and_failed_connections_count_other_answers_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend(outlier=OutlierDetection(consecutive_5xx=0, consecutive_gateway=2,
                                           max_ejection_percent=100))  # fmt: skip
    web.finished(A, 500, web.started(A), 3)  # not a gateway error
    web.connect_failed(A, 3)
    web.finished(A, 200, web.started(A), 3)  # resets the run
    web.connect_failed(A, 3)
    assert A in {web.pick(TARGETS) for _ in range(50)}
    web.finished(A, 502, web.started(A), 3)
    assert A not in {web.pick(TARGETS) for _ in range(50)}
    web.finished(B, NO_ANSWER, web.started(B), 3)  # the client went away: not B's fault
    web.finished(B, NO_ANSWER, web.started(B), 3)
    assert B in {web.pick(TARGETS) for _ in range(50)}


async def test_max_ejection_percent_keeps_endpoints_and_all_ejected_leaves_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    capped = backend(outlier=OutlierDetection(consecutive_5xx=1, max_ejection_percent=10))
    for target in TARGETS:
        capped.finished(target, 500, capped.started(target), 3)
    assert len({capped.pick(TARGETS) for _ in range(60)}) == 2  # one ejected, no more
    every = backend(outlier=OutlierDetection(consecutive_5xx=1, max_ejection_percent=100))
    for target in TARGETS:
        every.connect_failed(target, 3)
    assert every.pick(TARGETS) is None  # the session answers 503 UH


async def test_requests_beyond_http2_max_requests_are_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend(pool=ConnectionPool(max_requests=20))
    admitted = [web.admit() for _ in range(100)]
    assert admitted.count(True) == 20
    assert web.overflows == 80
    web.release()
    assert web.admit()


async def test_max_connections_queues_up_to_the_pending_limit_and_refuses_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend(pool=ConnectionPool(max_connections=2, max_pending=1))
    assert await web.connection_slot()
    assert await web.connection_slot()
    outcome: list[str] = []

    async def waiter() -> None:
        taken = await web.connection_slot()
        outcome.append("got a connection")
        web.connection_done(taken)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert web.pending == 1
        with pytest.raises(Overflow):  # one waits already: the next is refused, not queued
            await web.connection_slot()
        web.connection_done(True)
    assert outcome == ["got a connection"]
    assert web.overflows == 1


async def test_no_pool_means_no_limits(autojump_clock: trio.testing.MockClock) -> None:
    web = backend()
    assert all(web.admit() for _ in range(10_000))
    assert not await web.connection_slot()  # nothing to take
    assert web.reusable(1_000_000)
    assert web.may_retry()


async def test_max_requests_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    web = backend(pool=ConnectionPool(max_requests_per_connection=3))
    assert [web.reusable(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


async def test_a_backend_is_made_again_only_when_its_rule_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc = service("web")
    rule = DestinationRule("web", "default", "web", "default/web", "ROUND_ROBIN")
    backends = Backends(Balancer())
    first = backends.of(snapshot(svc, rule), svc)
    assert first.load_balancer == "ROUND_ROBIN"
    assert backends.of(snapshot(svc, rule, version=2), svc) is first
    changed = DestinationRule("web", "default", "web", "default/web", "RANDOM")
    assert backends.of(snapshot(svc, changed, version=3), svc).load_balancer == "RANDOM"
    assert backends.of(snapshot(svc, version=4), svc).load_balancer == "LEAST_REQUEST"
    other = DestinationRule("other", "default", "api", "default/api", "RANDOM")
    assert backends.of(snapshot(svc, other, version=5), svc).load_balancer == "LEAST_REQUEST"


async def test_connect_failures_count_for_outlier_detection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend(outlier=OutlierDetection(consecutive_5xx=2, max_ejection_percent=100))
    web.connect_failed(B, 3)
    web.finished(B, CONNECT_FAILURE, web.started(B), 3)
    assert B not in {web.pick(TARGETS) for _ in range(50)}
