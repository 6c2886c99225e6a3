"""One request's retries on its answers' status (``waypoint.retries``): the rule's codes
and attempts, the Service's retry budget, the backoff, and the ``URX`` flag. Pure, on
Trio's clock (``autojump_clock``: no real waiting)."""

from __future__ import annotations

import random

import structlog
import trio

from mesh.model_l7 import Retry
from mesh.model_traffic import BackendTrafficPolicy, ConnectionPool, DestinationRule, RetryBudget
from tests.builders import service
from waypoint import backends
from waypoint.decisions import Backend, Forward, Rule
from waypoint.dispatch import Plan
from waypoint.http_request import HttpRequest
from waypoint.retries import URX, Retries
from waypoint.upstream import Balancer

WEB = service("web", vip="10.96.0.10", ports={80: 8080}, backends=[])


def backend(
    budget: RetryBudget | None = None, pool: ConnectionPool | None = None
) -> backends.Backend:
    """The state of Service default/web, under a budget and a connection pool if given."""
    policy = BackendTrafficPolicy("budget", "default", ("default/web",), budget) if budget else None
    rule = DestinationRule("web", "default", "web", "default/web", pool=pool) if pool else None
    return backends.Backend("default/web", rule, policy, Balancer(), random.Random(1))


def plan(retry: Retry | None) -> Plan:
    request = HttpRequest("GET", "/", "web")
    rule = Rule("HTTPRoute", "default/web", 0, retry=retry)
    forward = Forward(rule, Backend("default/web", 80, 1), request)
    return Plan(request, [], WEB, forward)


async def test_an_answer_with_a_retry_code_goes_again_up_to_the_attempts_then_urx(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,), attempts=2)), backend())
    assert retries is not None
    assert retries.again(503, attempt_left=True)
    assert retries.again(503, attempt_left=True)
    assert not retries.again(503, attempt_left=True)  # two retries: the third answer stands
    assert retries.done == 2
    assert retries.flag(503) == URX
    assert retries.flag(200) is None  # a success after retries carries no flag


async def test_other_codes_and_the_last_attempt_are_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,), attempts=2)), backend())
    assert retries is not None
    assert not retries.again(500, attempt_left=True)
    assert retries.flag(500) is None
    assert not retries.again(503, attempt_left=False)  # no attempt left for it
    assert retries.flag(503) is None  # never retried: a plain 503, as without a retry


async def test_no_codes_or_a_body_means_no_retries_on_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend()
    assert Retries.of(plan(None), web) is None
    assert Retries.of(plan(Retry(())), web) is None


async def test_a_body_that_cannot_be_sent_again_is_not_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,))), backend())
    assert retries is not None
    with structlog.testing.capture_logs() as logs:
        assert not retries.again(503, attempt_left=True, replayable=False)
    assert retries.flag(503) == URX
    assert [e["event"] for e in logs] == ["retry_body_not_replayable"]


async def test_the_services_budget_refuses_a_retry_storm_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend(RetryBudget(percent=20, min_retries=0))
    allowed = 0
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):  # every answer fails: each request would retry twice
            retries = Retries.of(plan(Retry((503,), attempts=2)), web)
            assert retries is not None
            while retries.again(503, attempt_left=True):
                allowed += 1
            assert retries.flag(503) == URX
            retries.close()
    assert allowed <= 50 * 20 // 100  # at most a fifth of the requests
    assert allowed > 0
    refused = [e for e in logs if e["event"] == "retry_budget_exhausted"]
    assert refused, "the budget's refusal is logged"
    assert refused[0]["service"] == "default/web"


async def test_the_backoff_doubles_from_the_rules_up_to_ten_times_with_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,), attempts=10, backoff_ms=100)), backend())
    assert retries is not None
    waits = []
    for _ in range(6):
        assert retries.again(503, attempt_left=True)
        waits.append(retries.backoff())
    for wait, base in zip(waits, (0.1, 0.2, 0.4, 0.8, 1.0, 1.0), strict=True):
        assert base <= wait < base * 1.5


async def test_a_policys_budget_replaces_the_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A BackendTrafficPolicy of 50% lets half the requests be retried, where GEP-3388's
    default would stop at a fifth."""
    web = backend(RetryBudget(percent=50, min_retries=0))
    allowed = 0
    for _ in range(100):
        retries = Retries.of(plan(Retry((503,), attempts=1)), web)
        assert retries is not None
        allowed += retries.again(503, attempt_left=True)
        retries.close()
    assert allowed == 50


async def test_max_retries_bounds_the_requests_being_retried_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = backend(pool=ConnectionPool(max_retries=2))
    first, second, third = (Retries.of(plan(Retry((503,), attempts=3)), web)
                            for _ in range(3))  # fmt: skip
    assert first is not None
    assert second is not None
    assert third is not None
    assert first.again(503, attempt_left=True)
    assert second.again(503, attempt_left=True)
    assert first.again(503, attempt_left=True)  # a request already being retried goes on
    with structlog.testing.capture_logs() as logs:
        assert not third.again(503, attempt_left=True)  # two are being retried: no third
    assert third.flag(503) == URX
    assert [e["event"] for e in logs] == ["retry_overflow"]
    first.close()
    fourth = Retries.of(plan(Retry((503,), attempts=3)), web)
    assert fourth is not None
    assert fourth.again(503, attempt_left=True)  # a slot came free
